-- The dead-letter index (schemas/migrations/0014_dead_letters.sql): written by the worker as it
-- dead-letters, read by `paw dlq`. Filters go through dead_letters_matching(), the one definition of
-- what a filter picks; its ten arguments are $1..$10 in every query below that filters:
-- $1 status, $2 id prefixes, $3 item, $4 code, $5 error text, $6 since, $7 until, $8 routing-key
-- regex, $9 min attempts, $10 Item state.

-- name: dead_letter_record
-- One dead letter, after its copy on the dead queue was confirmed. The same message dead-lettered
-- again (a redelivery after a crash between the confirm and the ack, or after a replay was recorded
-- but not acked) counts as a copy and is dead again. Our Item id is looked up where the message
-- names only its public token (item.link) or Plaid's item_id (Plaid webhooks).
-- $1 key, $2 routing_key, $3 message_id, $4 queue, $5 item_id (uuid), $6 plaid_item_id,
-- $7 public_token_sha256, $8 error_class, $9 error_code, $10 error_message, $11 traceback,
-- $12 request_id, $13 attempts, $14 replays, $15 first_failure, $16 dead_lettered_at, $17 headers,
-- $18 body (redacted), $19 indexed_by
INSERT INTO dead_letters AS d (
    key, routing_key, message_id, queue, item_id, plaid_item_id, public_token_sha256,
    error_class, error_code, error_message, traceback, request_id, attempts, replays,
    first_failure, dead_lettered_at, headers, body, indexed_by
)
VALUES (
    $1, $2, $3, $4,
    COALESCE(
        $5::uuid,
        (SELECT id FROM items WHERE public_token_sha256 = $7 LIMIT 1),
        (SELECT id FROM items WHERE plaid_item_id = $6 LIMIT 1)
    ),
    $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, COALESCE($16, now()), $17, $18, $19
)
ON CONFLICT (key) DO UPDATE
SET copies = d.copies + 1,
    status = 'dead',
    status_at = now(),
    dead_lettered_at = EXCLUDED.dead_lettered_at,
    attempts = EXCLUDED.attempts,
    headers = EXCLUDED.headers,
    traceback = CASE WHEN EXCLUDED.traceback <> '' THEN EXCLUDED.traceback ELSE d.traceback END
WHERE $19 = 'worker'
RETURNING (xmax = 0) AS inserted;

-- name: dead_letter_page
-- One page of the chosen dead letters, oldest first, with the Item's current state.
-- $11 after seq (0: from the start), $12 page size.
SELECT d.*, i.state AS item_state
FROM dead_letters_matching($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) d
LEFT JOIN items i ON i.id = d.item_id
WHERE d.seq > $11
ORDER BY d.seq
LIMIT $12;

-- name: dead_letter_keys
-- Every chosen dead letter's key, oldest first (what a replay or purge will take from the queue);
-- $11 at most this many (NULL: all).
SELECT d.key
FROM dead_letters_matching($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) d
ORDER BY d.seq
LIMIT $11;

-- name: dead_letter_reasons
-- How many of the chosen dead letters per reason (Plaid's or Atomic's error code, else the
-- exception class), most first.
SELECT COALESCE(NULLIF(d.error_code, ''), NULLIF(d.error_class, ''), 'unknown') AS reason,
       count(*) AS n,
       min(d.dead_lettered_at) AS first_at,
       max(d.dead_lettered_at) AS last_at
FROM dead_letters_matching($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) d
GROUP BY 1
ORDER BY n DESC, reason;

-- name: dead_letter_by_prefix
-- The dead letters (any status) whose key starts with $1: one is a hit, more is ambiguous.
SELECT d.*, i.state AS item_state
FROM dead_letters d
LEFT JOIN items i ON i.id = d.item_id
WHERE starts_with(d.key, $1)
ORDER BY d.seq
LIMIT 10;

-- name: dead_letter_keys_known
-- Which of these keys have a row, and its status. $1 keys (text[])
SELECT key, status FROM dead_letters WHERE key = ANY($1::text[]);

-- name: dead_letter_mark
-- A dead letter replayed or purged: run in the transaction that records the action (the replay's
-- claim; the purge before its ack). $1 key, $2 status, $3 action_id (NULL: keep the one there, as
-- for a dead letter an earlier replay published)
UPDATE dead_letters SET status = $2, status_at = now(), action_id = COALESCE($3, action_id) WHERE key = $1;

-- name: dead_letter_restore
-- Reindex found this message still on the dead queue although its row says purged (a purge killed
-- between its record and its ack): it is dead again. $1 keys (text[])
UPDATE dead_letters SET status = 'dead', status_at = now() WHERE key = ANY($1::text[]) AND status = 'purged';

-- name: dead_letter_counts
-- The index at a glance: dead letters per status.
SELECT status, count(*) AS n FROM dead_letters GROUP BY status;
