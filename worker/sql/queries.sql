-- name: create_item
-- Inserts a new Item in state link, or returns the one already made from the same public_token.
-- $1 id, $2 public_token_sha256, $3 client_user_id, $4 requested_account_id, $5 submission_request_id,
-- $6 cause, $7 event_id
WITH new AS (
    INSERT INTO items (id, public_token_sha256, client_user_id, requested_account_id, submission_request_id, state)
    VALUES ($1, $2, $3, $4, $5, 'link')
    ON CONFLICT (public_token_sha256) DO NOTHING
    RETURNING *
), hist AS (
    INSERT INTO item_history (item_id, from_state, to_state, trigger, cause, event_id)
    SELECT id, NULL, 'link', 'submitted', $6, $7 FROM new
)
SELECT *, true AS created FROM new
UNION ALL
SELECT *, false AS created FROM items WHERE public_token_sha256 = $2 AND NOT EXISTS (SELECT 1 FROM new);

-- name: get_item
-- $1 id
SELECT * FROM items WHERE id = $1;

-- name: get_item_by_plaid_id
-- $1 plaid_item_id
SELECT * FROM items WHERE plaid_item_id = $1;

-- name: item_history
-- $1 item id
SELECT * FROM item_history WHERE item_id = $1 ORDER BY id;

-- name: transition
-- One guarded state change and its history row, in one statement. No row back: the Item was not in
-- one of the allowed states (illegal, or already applied by someone else). Entering login_required
-- remembers the state it left; leaving it (login repaired, failed, revoked) forgets it.
-- $1 id, $2 to_state, $3 allowed from (text[]), $4 trigger, $5 cause, $6 event_id, $7 detail (jsonb),
-- $8 plaid_item_id, $9 account_id, $10 access_token_key_id, $11 access_token_sealed,
-- $12 processor_token_key_id, $13 processor_token_sealed, $14 atomic_funding_source_id,
-- $15 error_code, $16 error_type, $17 error_message, $18 plaid_request_id, $19 destroy_tokens (bool)
WITH prev AS (
    SELECT id, state FROM items WHERE id = $1 AND state = ANY($3::text[]) FOR UPDATE
), upd AS (
    UPDATE items AS i SET
        state = $2,
        resume_state = CASE WHEN $2 = 'login_required' THEN prev.state ELSE NULL END,
        plaid_item_id = COALESCE($8, i.plaid_item_id),
        account_id = COALESCE($9, i.account_id),
        access_token_key_id = CASE WHEN $19 THEN NULL ELSE COALESCE($10, i.access_token_key_id) END,
        access_token_sealed = CASE WHEN $19 THEN NULL ELSE COALESCE($11, i.access_token_sealed) END,
        processor_token_key_id = CASE WHEN $19 THEN NULL ELSE COALESCE($12, i.processor_token_key_id) END,
        processor_token_sealed = CASE WHEN $19 THEN NULL ELSE COALESCE($13, i.processor_token_sealed) END,
        atomic_funding_source_id = COALESCE($14, i.atomic_funding_source_id),
        error_code = COALESCE($15, i.error_code),
        error_type = COALESCE($16, i.error_type),
        error_message = COALESCE($17, i.error_message),
        plaid_request_id = COALESCE($18, i.plaid_request_id),
        updated_at = now(),
        version = i.version + 1
    FROM prev
    WHERE i.id = prev.id
    RETURNING i.*, prev.state AS from_state
), hist AS (
    INSERT INTO item_history (item_id, from_state, to_state, trigger, cause, event_id, detail)
    SELECT id, from_state, state, $4, $5, $6, $7 FROM upd
)
SELECT * FROM upd;

-- name: record_event
-- Marks an event key as seen; no row back means it was seen before.
-- $1 event_key, $2 item_id, $3 routing_key, $4 outcome, $5 payload (jsonb)
INSERT INTO inbox (event_key, item_id, routing_key, outcome, payload)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (event_key) DO NOTHING
RETURNING event_key;

-- name: count_by_state
SELECT state, count(*) AS n FROM items GROUP BY state ORDER BY state;

-- name: stuck_atomic_pending
-- $1 older than (interval), $2 limit
SELECT * FROM items
WHERE state = 'atomic_pending' AND updated_at < now() - $1::interval
ORDER BY updated_at
LIMIT $2;

-- name: claim_item
-- Takes the Item's lease unless another worker holds an unexpired one.
-- $1 id, $2 owner, $3 lease seconds (float)
UPDATE items SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
WHERE id = $1 AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2)
RETURNING *;

-- name: release_item
-- $1 id, $2 owner
UPDATE items SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2;

-- name: get_item_by_token_hash
-- $1 public_token_sha256
SELECT * FROM items WHERE public_token_sha256 = $1;

-- name: touch_item
-- $1 id
UPDATE items SET updated_at = now() WHERE id = $1;
