-- name: create_item
-- Inserts a new Item in state link (with its history row and its first outcome event), or returns
-- the one already made from the same public_token.
-- A new Item is leased to $8 for $9 seconds (null: not leased), saving the worker a round trip.
-- $1 id, $2 public_token_sha256, $3 client_user_id, $4 requested_account_id, $5 submission_request_id,
-- $6 cause, $7 event_id, $8 lease owner (uuid|null), $9 lease seconds (float|null),
-- $10 api_key_fingerprint (text|null: submitted over AMQP)
WITH new AS (
    INSERT INTO items (id, public_token_sha256, client_user_id, requested_account_id, submission_request_id, state,
                       lease_owner, lease_until, api_key_fingerprint)
    VALUES ($1, $2, $3, $4, $5, 'link', $8, now() + make_interval(secs => $9), $10)
    ON CONFLICT (public_token_sha256) DO NOTHING
    RETURNING *
), hist AS (
    INSERT INTO item_history (item_id, from_state, to_state, trigger, cause, event_id)
    SELECT id, NULL, 'link', 'submitted', $6, $7 FROM new
), event AS (
    INSERT INTO outbox (event_id, item_id, sequence, routing_key, body)
    SELECT e.id, new.id, 1, 'item.state.link', jsonb_build_object(
        'event_id', e.id, 'item_id', new.id, 'client_user_id', new.client_user_id,
        'request_id', new.submission_request_id, 'from_state', NULL, 'to_state', 'link',
        'trigger', 'submitted', 'error_code', NULL, 'atomic_funding_source_id', NULL,
        'sequence', 1, 'occurred_at', new.created_at)
    FROM new CROSS JOIN LATERAL (SELECT gen_random_uuid() AS id) AS e
)
SELECT *, true AS created FROM new
UNION ALL
SELECT *, false AS created FROM items WHERE public_token_sha256 = $2 AND NOT EXISTS (SELECT 1 FROM new);

-- name: get_item
-- $1 id
SELECT * FROM items WHERE id = $1;

-- name: item_owner
-- Whose Item it is: the fingerprint of the API key that submitted it (null: over AMQP). No row: no such Item.
-- $1 id
SELECT api_key_fingerprint FROM items WHERE id = $1;

-- name: get_item_by_plaid_id
-- $1 plaid_item_id
SELECT * FROM items WHERE plaid_item_id = $1;

-- name: item_history
-- $1 item id
SELECT * FROM item_history WHERE item_id = $1 ORDER BY id;

-- name: transition
-- One guarded state change, its history row and its outcome event (the outbox), in one statement. No row back: the Item was not in
-- one of the allowed states (illegal, or already applied by someone else). Entering login_required
-- remembers the state it left; leaving it (login repaired, failed, revoked) forgets it, and a repair
-- clears the error that made the Item wait for its user.
-- $1 id, $2 to_state, $3 allowed from (text[]), $4 trigger, $5 cause, $6 event_id, $7 detail (jsonb),
-- $8 plaid_item_id, $9 account_id, $10 access_token_key_id, $11 access_token_sealed,
-- $12 processor_token_key_id, $13 processor_token_sealed, $14 atomic_funding_source_id,
-- $15 error_code, $16 error_type, $17 error_message, $18 plaid_request_id, $19 destroy_tokens (bool),
-- $20 lease owner (uuid|null: leave the lease alone), $21 lease seconds (float: renew it for that long;
-- null: release it) -- only when $20 holds the lease,
-- $22 unless held (bool: refused while the Item holds an answer from Atomic, held_at),
-- $23 version (bigint|null: only from this version of the row, the one the caller decided on),
-- $24 event_key (text|null: no inbox record), $25 routing_key, $26 payload (jsonb): the event that
-- caused it, recorded in the inbox as applied; a duplicate (see record_event) refuses it all
WITH prev AS (
    SELECT id, state FROM items
    WHERE id = $1 AND state = ANY($3::text[])
      AND NOT ($22::bool AND held_at IS NOT NULL) AND ($23::bigint IS NULL OR version = $23)
    FOR UPDATE
), ev AS (
    INSERT INTO inbox AS x (event_key, item_id, routing_key, outcome, payload)
    SELECT $24, prev.id, $25, 'applied', $26 FROM prev WHERE $24::text IS NOT NULL
    ON CONFLICT (event_key) DO UPDATE
        SET item_id = EXCLUDED.item_id, outcome = EXCLUDED.outcome, payload = EXCLUDED.payload,
            received_at = now()
        WHERE x.received_at < now() - interval '24 hours'
    RETURNING event_key
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
        -- a repaired login clears the error that made the Item wait for its user
        error_code = CASE WHEN $4 = 'login_repaired' THEN NULL ELSE COALESCE($15, i.error_code) END,
        error_type = CASE WHEN $4 = 'login_repaired' THEN NULL ELSE COALESCE($16, i.error_type) END,
        error_message = CASE WHEN $4 = 'login_repaired' THEN NULL ELSE COALESCE($17, i.error_message) END,
        plaid_request_id = COALESCE($18, i.plaid_request_id),
        updated_at = now(),
        version = i.version + 1,
        lease_owner = CASE WHEN i.lease_owner = $20 AND $21::float8 IS NULL THEN NULL ELSE i.lease_owner END,
        lease_until = CASE
            WHEN i.lease_owner IS DISTINCT FROM $20 THEN i.lease_until
            WHEN $21::float8 IS NULL THEN NULL
            ELSE now() + make_interval(secs => $21::float8)
        END
    FROM prev
    WHERE i.id = prev.id AND ($24::text IS NULL OR EXISTS (SELECT 1 FROM ev))
    RETURNING i.*, prev.state AS from_state
), hist AS (
    INSERT INTO item_history (item_id, from_state, to_state, trigger, cause, event_id, detail)
    SELECT id, from_state, state, $4, $5, $6, $7 FROM upd
), event AS (
    INSERT INTO outbox (event_id, item_id, sequence, routing_key, body)
    SELECT e.id, upd.id, upd.version + 1, 'item.state.' || upd.state, jsonb_build_object(
        'event_id', e.id, 'item_id', upd.id, 'client_user_id', upd.client_user_id,
        'request_id', upd.submission_request_id, 'from_state', upd.from_state, 'to_state', upd.state,
        'trigger', $4::text, 'error_code', upd.error_code, 'atomic_funding_source_id', upd.atomic_funding_source_id,
        'sequence', upd.version + 1, 'occurred_at', upd.updated_at)
    FROM upd CROSS JOIN LATERAL (SELECT gen_random_uuid() AS id) AS e
)
SELECT * FROM upd;

-- name: record_event
-- Marks an event key as seen; no row back means it was seen in the last 24 hours (a duplicate), or
-- the Item is no longer at version $6.
-- Plaid webhooks carry no id, so the key is the body hash, and two genuine events can share a body
-- (the same ITEM ERROR twice). Plaid retries a webhook for up to 24 hours: after that, an identical
-- body is a new event. A held event (outcome 'held') marks its Item (held_at), under the row's lock.
-- $1 event_key, $2 item_id, $3 routing_key, $4 outcome, $5 payload (jsonb),
-- $6 version (bigint|null: no guard; the caller holds the row or there is no Item): only while the
-- Item is still at the version the outcome was decided on
WITH prev AS (
    SELECT id FROM items WHERE id = $2 AND version = $6 FOR UPDATE
), ev AS (
    INSERT INTO inbox AS i (event_key, item_id, routing_key, outcome, payload)
    SELECT $1, $2, $3, $4, $5 WHERE $6::bigint IS NULL OR EXISTS (SELECT 1 FROM prev)
    ON CONFLICT (event_key) DO UPDATE
        SET item_id = EXCLUDED.item_id, outcome = EXCLUDED.outcome, payload = EXCLUDED.payload,
            received_at = now()
        WHERE i.received_at < now() - interval '24 hours'
    RETURNING event_key
), held AS (
    UPDATE items SET held_at = now() WHERE id = $2 AND $4 = 'held' AND EXISTS (SELECT 1 FROM ev)
)
SELECT event_key FROM ev;

-- name: seen_event
-- True if the event key was recorded in the last 24 hours (what record_event calls a duplicate).
-- $1 event_key
SELECT EXISTS (SELECT 1 FROM inbox WHERE event_key = $1 AND received_at >= now() - interval '24 hours');

-- name: count_by_state
SELECT state, count(*) AS n FROM items GROUP BY state ORDER BY state;

-- name: stuck_atomic_pending
-- $1 older than (interval), $2 limit
SELECT * FROM items
WHERE state = 'atomic_pending' AND updated_at < now() - $1::interval
ORDER BY updated_at
LIMIT $2;

-- name: due_awaiting_verification
-- Items waiting for their account's verification, not looked at for $1: marked looked-at (updated_at)
-- and returned, for the reconciler to re-drive. SKIP LOCKED: two workers never pick the same Item.
-- $1 older than (interval), $2 limit
UPDATE items SET updated_at = now()
WHERE id IN (
    SELECT id FROM items
    WHERE state = 'awaiting_verification' AND updated_at < now() - $1::interval
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: awaiting_since
-- When the Item first entered awaiting_verification (Plaid's micro-deposit clock runs from before
-- then; a return from login_required or a later re-entry does not restart it). $1 item id
SELECT min(at) FROM item_history WHERE item_id = $1 AND to_state = 'awaiting_verification';

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

-- name: lock_item_by_plaid_id
-- Holds the Item's row for the rest of the transaction: events for one Item apply one at a time.
-- $1 plaid_item_id
SELECT * FROM items WHERE plaid_item_id = $1 FOR UPDATE;

-- name: lock_item
-- $1 id
SELECT * FROM items WHERE id = $1 FOR UPDATE;

-- name: set_conditions
-- $1 id, $2 login_changed_at, $3 consent_expires_at, $4 disconnect_at, $5 disconnect_reason
UPDATE items SET
    login_changed_at = COALESCE($2, login_changed_at),
    consent_expires_at = COALESCE($3, consent_expires_at),
    disconnect_at = COALESCE($4, disconnect_at),
    disconnect_reason = COALESCE($5, disconnect_reason),
    updated_at = CASE WHEN state = 'atomic_pending' THEN updated_at ELSE now() END
WHERE id = $1;

-- name: mark_atomic_removed
-- $1 id
UPDATE items SET atomic_removed_at = now() WHERE id = $1 AND atomic_removed_at IS NULL;

-- name: expiring_items
-- Items whose consent expires, or which Plaid will disconnect, before now + $1.
-- $1 within (interval)
SELECT * FROM items
WHERE state NOT IN ('revoked', 'failed')
  AND (consent_expires_at < now() + $1::interval OR disconnect_at < now() + $1::interval)
ORDER BY LEAST(consent_expires_at, disconnect_at);

-- name: destroy_tokens
-- Forgets an Item's tokens without changing its state (e.g. after it failed for good).
-- $1 id
UPDATE items SET access_token_key_id = NULL, access_token_sealed = NULL,
    processor_token_key_id = NULL, processor_token_sealed = NULL
WHERE id = $1 AND (access_token_sealed IS NOT NULL OR processor_token_sealed IS NOT NULL);

-- name: oldest_stuck_items
-- Items in a state the worker should leave within minutes, longest-waiting first.
-- $1 older than (interval), $2 limit
SELECT id, state, updated_at, error_code FROM items
WHERE state IN ('link', 'exchanged', 'processor_token_issued', 'atomic_pending')
  AND updated_at < now() - $1::interval
ORDER BY updated_at
LIMIT $2;

-- name: last_webhook
SELECT routing_key, outcome, received_at FROM inbox ORDER BY received_at DESC LIMIT 1;

-- name: need_atomic_refresh
-- $1 id
UPDATE items SET atomic_refresh_needed_at = now() WHERE id = $1;

-- name: atomic_refreshed
-- Clears the flag unless a newer DEFAULT_UPDATE set it again meanwhile. $1 id, $2 the flag's value seen
UPDATE items SET atomic_refresh_needed_at = NULL WHERE id = $1 AND atomic_refresh_needed_at = $2;

-- name: record_operator_alert
-- An operator error met now (first time, or again).
-- $1 error_code, $2 service, $3 step, $4 hint
INSERT INTO operator_alerts (error_code, service, step, hint) VALUES ($1, $2, $3, $4)
ON CONFLICT (error_code, service, step)
DO UPDATE SET last_seen = now(), seen = operator_alerts.seen + 1, hint = EXCLUDED.hint;

-- name: recent_operator_alerts
-- Operator errors met within $1 (interval), the latest first.
SELECT error_code, service, step, hint, first_seen, last_seen, seen FROM operator_alerts
WHERE last_seen > now() - $1::interval ORDER BY last_seen DESC;

-- name: mark_plaid_removed
-- $1 id
UPDATE items SET plaid_removed_at = now() WHERE id = $1 AND plaid_removed_at IS NULL;

-- name: logins_to_check
-- login_required Items not looked at for $1 (interval), the longest-waiting first, at most $2: the
-- periodic check asks Plaid whether their login was repaired with nobody telling paw. An Item
-- waiting for AUTH PRODUCT_PERMISSIONS_REQUIRED is left out (/item/get shows no error for it).
-- Each one checked is touched, so the next run takes the next ones.
-- $1 older than (interval), $2 limit
WITH due AS (
    SELECT id FROM items
    WHERE state = 'login_required'
      AND access_token_sealed IS NOT NULL
      AND error_code IS DISTINCT FROM 'PRODUCT_PERMISSIONS_REQUIRED'
      AND updated_at < now() - $1::interval
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE items AS i SET updated_at = now() FROM due WHERE i.id = due.id
RETURNING i.id;

-- name: try_session_lock
-- True if this session now holds (or already held) advisory lock $1 (bigint): held until the
-- session ends. The worker exporting the deployment-wide gauges holds one.
SELECT pg_try_advisory_lock($1);

-- name: oldest_moving_age
-- Seconds since the longest-waiting Item in a state the worker should leave within minutes last
-- moved (0: none).
SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at)), 0)::float8 FROM items
WHERE state IN ('link', 'exchanged', 'processor_token_issued', 'atomic_pending');

-- name: add_item_note
-- $1 item id, $2 kind, $3 actor, $4 text, $5 message id (text|null)
INSERT INTO item_notes (item_id, kind, actor, text, message_id) VALUES ($1, $2, $3, $4, $5);

-- name: item_notes
-- $1 item id
SELECT kind, actor, text, message_id, at FROM item_notes WHERE item_id = $1 ORDER BY id;

-- name: held_events
-- Atomic's answers that arrived while the Item's submission was not yet committed (outcome 'held'),
-- oldest first, locked until the transaction that applies them ends; the Item's mark (held_at) is
-- cleared with it. Read after the transaction locked the Item's row: every webhook that held an event
-- held that lock until it committed.
-- $1 item_id
WITH cleared AS (
    UPDATE items SET held_at = NULL WHERE id = $1 AND held_at IS NOT NULL
)
SELECT event_key, routing_key, payload, received_at
FROM inbox
WHERE item_id = $1 AND outcome = 'held'
ORDER BY received_at
FOR UPDATE;

-- name: settle_event
-- A held event, applied (or found moot) once the submission committed.
-- $1 event_key, $2 outcome
UPDATE inbox SET outcome = $2 WHERE event_key = $1;
