-- Queries of the dead-letter tools (worker/dlq.py). Tables: schemas/migrations/0002_dlq_audit.sql.

-- name: dlq_action_start
-- Opens the audit row of one replay or purge (dry runs included); finished_at stays NULL if the run
-- is killed, and dlq_replayed then tells how far it got.
-- $1 action ('replay' | 'purge'), $2 actor, $3 filters (jsonb), $4 dry_run
INSERT INTO dlq_actions (action, actor, filters, dry_run)
VALUES ($1, $2, $3, $4)
RETURNING id;

-- name: dlq_action_finish
-- $1 id, $2 message_count (replayed or purged)
UPDATE dlq_actions SET message_count = $2, finished_at = now() WHERE id = $1;

-- name: dlq_claim
-- Claims one dead letter for replay; run in the transaction that publishes it. While that
-- transaction is open the row is a claim (a second replayer of the same key waits on it); once
-- committed it is the record. No row back: replayed before, so ack it and publish nothing.
-- $1 message_key, $2 action_id, $3 routing_key
INSERT INTO dlq_replayed (message_key, action_id, routing_key)
VALUES ($1, $2, $3)
ON CONFLICT (message_key) DO NOTHING
RETURNING message_key;

-- name: dlq_replayed_keys
-- Which of these dead letters were replayed already (what a dry run reports).
-- $1 message keys (text[])
SELECT message_key FROM dlq_replayed WHERE message_key = ANY($1::text[]);

-- name: dlq_item_refs
-- The Items dead letters are about, from the public-token hash (item.link) or Plaid's item_id
-- (Plaid webhooks).
-- $1 public_token_sha256 values (text[]), $2 plaid_item_id values (text[])
SELECT id, public_token_sha256, plaid_item_id
FROM items
WHERE public_token_sha256 = ANY($1::text[]) OR plaid_item_id = ANY($2::text[]);
