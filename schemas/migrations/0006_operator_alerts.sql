-- Errors in paw's own setup (Plaid keys, Dashboard, environment), never an Item's fault: what the
-- worker met, where, and when, for /readyz and `paw status`. The messages themselves wait in the
-- dead-letter queue for `paw dlq replay` once the setup is fixed.
CREATE TABLE operator_alerts (
    error_code  text        NOT NULL,
    service     text        NOT NULL,
    step        text        NOT NULL,
    hint        text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    seen        bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (error_code, service, step)
);

-- When the Item was removed at Plaid (/item/remove): revocation removes it before its tokens go.
ALTER TABLE items ADD COLUMN plaid_removed_at timestamptz;
