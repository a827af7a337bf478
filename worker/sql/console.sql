-- What the on-call console (worker/console/) reads beyond what `paw status` and `paw dlq` read.

-- name: console_states
-- Items per state, and how many of them got there in the last 24 hours (one pass over items).
SELECT state, count(*) AS n, count(*) FILTER (WHERE updated_at > now() - interval '24 hours') AS changed_24h
FROM items
GROUP BY state
ORDER BY state;

-- name: console_error_codes
-- Upstream errors Items hold now, by code, most first.
SELECT error_code, count(*) AS n, max(updated_at) AS last_at
FROM items
WHERE error_code IS NOT NULL
GROUP BY error_code
ORDER BY n DESC, error_code
LIMIT 15;

-- name: console_last_applied
-- The last webhook applied per source (the inbox's newest row per routing-key family).
SELECT DISTINCT ON (split_part(routing_key, '.', 2))
       split_part(routing_key, '.', 2) AS source, routing_key, outcome, received_at
FROM inbox
WHERE received_at > now() - interval '7 days'
ORDER BY split_part(routing_key, '.', 2), received_at DESC;

-- name: console_inbox_for_item
-- The webhooks recorded for one Item, oldest first. $1 item id
SELECT event_key, routing_key, outcome, payload, received_at
FROM inbox
WHERE item_id = $1
ORDER BY received_at
LIMIT 200;

-- name: console_dead_letters_for_item
-- One Item's dead letters, any status, with their replays. $1 item id
SELECT d.key, d.routing_key, d.status, d.status_at, d.dead_lettered_at, d.error_class, d.error_code,
       d.error_message, d.attempts, d.replays, r.replayed_at, a.actor AS replayed_by
FROM dead_letters d
LEFT JOIN dlq_replayed r ON r.message_key = d.key
LEFT JOIN dlq_actions a ON a.id = r.action_id
WHERE d.item_id = $1
ORDER BY d.seq
LIMIT 200;

-- name: dead_letter_groups
-- The chosen dead letters grouped by reason, as webhook gateways group failures into issues: how
-- many, first and last seen, and the newest one as a sample. $1..$10 as dead_letters_matching().
SELECT COALESCE(NULLIF(d.error_code, ''), NULLIF(d.error_class, ''), 'unknown') AS reason,
       count(*) AS n,
       min(d.dead_lettered_at) AS first_at,
       max(d.dead_lettered_at) AS last_at,
       (array_agg(d.key ORDER BY d.seq DESC))[1] AS sample_key,
       (array_agg(d.error_message ORDER BY d.seq DESC))[1] AS sample_error,
       (array_agg(d.routing_key ORDER BY d.seq DESC))[1] AS sample_routing_key
FROM dead_letters_matching($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) d
GROUP BY 1
ORDER BY n DESC, reason;

-- name: console_actions
-- The audit, newest first: every replay, purge and reindex. $1 limit
SELECT id, action, actor, filters, dry_run, message_count, started_at, finished_at
FROM dlq_actions
ORDER BY id DESC
LIMIT $1;

-- name: console_notes
-- What people did to Items besides state changes (paw item retry), newest first. $1 limit
SELECT n.item_id, n.kind, n.actor, n.text, n.message_id, n.at
FROM item_notes n
ORDER BY n.id DESC
LIMIT $1;
