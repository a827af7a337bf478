-- The outcome-event relay (worker/events/relay.py). One relay publishes at a time, whichever worker
-- runs it: each batch holds a transaction-scoped advisory lock, so events of one Item are never
-- published by two relays at once, out of order.

-- name: outbox_lock
-- True if this transaction now holds the relay's lock; false if another relay holds it.
-- $1 lock id (bigint)
SELECT pg_try_advisory_xact_lock($1);

-- name: outbox_unsent
-- Up to $1 unsent events, oldest first, each body as the JSON text it is published as.
SELECT id, event_id, item_id, routing_key, body::text AS body FROM outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT $1;

-- name: outbox_mark_sent
-- $1 ids (bigint[]) the broker confirmed
UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[]);

-- name: outbox_backlog
-- Unsent events and the age of the oldest, in seconds (0 when none).
SELECT count(*) AS unsent, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest_s
FROM outbox WHERE sent_at IS NULL;

-- name: outbox_prune
-- Deletes up to $2 sent events with ids up to $1 (the relay's mark from the retention ago: an index
-- range over the oldest rows only); returns how many went.
WITH gone AS (
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox WHERE id <= $1 AND sent_at IS NOT NULL ORDER BY id LIMIT $2
    )
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: item_events
-- An Item's outcome events, in sequence order (sent or not, until pruned). $1 item id
SELECT event_id, sequence, routing_key, body, created_at, sent_at FROM outbox
WHERE item_id = $1 ORDER BY sequence;
