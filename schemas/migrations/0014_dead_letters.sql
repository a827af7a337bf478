-- The dead letters, indexed: one row per dead letter the worker put on <prefix>.dead, written after
-- its copy there was confirmed and before the original was acked (`paw dlq reindex` adds rows for
-- dead letters that have none). `paw dlq list` and `show` read only this table, so looking never
-- touches the queue (a read there counts as a delivery); `replay` and `purge` select here and take
-- the chosen messages from the queue once per action. The queue still holds the message itself: the
-- body here is redacted (no token is stored in clear).
CREATE TABLE dead_letters (
    seq                  bigserial   UNIQUE,              -- insertion order: list order and page cursor
    key                  text        PRIMARY KEY,         -- sha256 fingerprint (worker/bus/dlq.py)
    routing_key          text        NOT NULL,
    message_id           text,
    queue                text        NOT NULL DEFAULT '',  -- the work queue it failed on
    item_id              uuid,                              -- our Item, where it is known
    plaid_item_id        text,
    public_token_sha256  text,
    error_class          text        NOT NULL DEFAULT '',
    error_code           text        NOT NULL DEFAULT '',
    error_message        text        NOT NULL DEFAULT '',
    traceback            text        NOT NULL DEFAULT '',
    request_id           text        NOT NULL DEFAULT '',
    attempts             integer     NOT NULL DEFAULT 0,
    replays              integer     NOT NULL DEFAULT 0,
    copies               integer     NOT NULL DEFAULT 1,   -- the same message dead-lettered again
    first_failure        timestamptz,
    dead_lettered_at     timestamptz NOT NULL DEFAULT now(),
    headers              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    body                 jsonb,                             -- redacted
    status               text        NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'replayed', 'purged')),
    status_at            timestamptz NOT NULL DEFAULT now(),
    action_id            bigint      REFERENCES dlq_actions (id),
    indexed_at           timestamptz NOT NULL DEFAULT now(),
    indexed_by           text        NOT NULL DEFAULT 'worker'  -- 'worker' or 'reindex'
);
CREATE INDEX dead_letters_dead ON dead_letters (seq) WHERE status = 'dead';
CREATE INDEX dead_letters_item ON dead_letters (item_id) WHERE item_id IS NOT NULL;
CREATE INDEX dead_letters_plaid_item ON dead_letters (plaid_item_id) WHERE plaid_item_id IS NOT NULL;

-- The one definition of which dead letters a filter picks (`paw dlq list/show/replay/purge`, and
-- later the console): every criterion given (non-NULL) must hold. The routing-key pattern arrives as
-- a regular expression made from the AMQP topic pattern (worker/bus/dlq.py topic_regex), matched
-- against '.' || routing_key.
CREATE FUNCTION dead_letters_matching(
    p_status        text,         -- 'dead', 'replayed', 'purged'; NULL: any
    p_ids           text[],       -- id prefixes, any may match
    p_item          text,         -- our Item id or Plaid's item_id
    p_code          text,         -- error code, case-insensitive
    p_error         text,         -- text in the error class or message, case-insensitive
    p_since         timestamptz,  -- dead-lettered at or after
    p_until         timestamptz,  -- dead-lettered before
    p_routing_regex text,
    p_min_attempts  integer,
    p_state         text          -- the Item's current state
) RETURNS SETOF dead_letters
LANGUAGE sql STABLE AS $$
    SELECT d.*
    FROM dead_letters d
    WHERE (p_status IS NULL OR d.status = p_status)
      AND (p_ids IS NULL OR EXISTS (SELECT 1 FROM unnest(p_ids) AS p (prefix) WHERE starts_with(d.key, p.prefix)))
      AND (p_item IS NULL OR d.item_id::text = lower(p_item) OR d.plaid_item_id = p_item)
      AND (p_code IS NULL OR upper(d.error_code) = upper(p_code))
      AND (p_error IS NULL OR strpos(lower(d.error_class || ' ' || d.error_message), lower(p_error)) > 0)
      AND (p_since IS NULL OR d.dead_lettered_at >= p_since)
      AND (p_until IS NULL OR d.dead_lettered_at < p_until)
      AND (p_routing_regex IS NULL OR ('.' || d.routing_key) ~ p_routing_regex)
      AND (p_min_attempts IS NULL OR d.attempts >= p_min_attempts)
      AND (p_state IS NULL OR EXISTS (SELECT 1 FROM items i WHERE i.id = d.item_id AND i.state = p_state))
$$;

-- `paw dlq reindex` is audited like a replay or a purge.
ALTER TABLE dlq_actions DROP CONSTRAINT dlq_actions_action_check;
ALTER TABLE dlq_actions ADD CONSTRAINT dlq_actions_action_check CHECK (action IN ('replay', 'purge', 'reindex'));
