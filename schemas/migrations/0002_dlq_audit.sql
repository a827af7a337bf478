-- What on-call did with dead letters: every replay and purge, who, when, what, how many.
CREATE TABLE dlq_actions (
    id             bigserial PRIMARY KEY,
    action         text NOT NULL CHECK (action IN ('replay', 'purge')),
    actor          text NOT NULL,
    filters        jsonb NOT NULL DEFAULT '{}'::jsonb,
    dry_run        boolean NOT NULL DEFAULT false,
    message_count  integer NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

-- One row per dead letter replayed, keyed by a stable fingerprint, so replaying the same dead letter
-- twice (two engineers, or a killed CLI run again) republishes it once.
CREATE TABLE dlq_replayed (
    message_key  text PRIMARY KEY,
    action_id    bigint REFERENCES dlq_actions (id),
    routing_key  text NOT NULL,
    replayed_at  timestamptz NOT NULL DEFAULT now()
);
