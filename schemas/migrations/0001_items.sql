-- Items, their history, and the inbox of applied events.
CREATE TABLE items (
    id                        uuid PRIMARY KEY,
    public_token_sha256       text NOT NULL UNIQUE,
    client_user_id            text NOT NULL,
    requested_account_id      text,
    submission_request_id     text,
    state                     text NOT NULL CHECK (state IN (
        'link', 'exchanged', 'awaiting_verification', 'processor_token_issued', 'atomic_pending',
        'atomic_verified', 'atomic_rejected', 'login_required', 'failed', 'revoked')),
    resume_state              text,
    plaid_item_id             text UNIQUE,
    account_id                text,
    access_token_key_id       text,
    access_token_sealed       bytea,
    processor_token_key_id    text,
    processor_token_sealed    bytea,
    atomic_funding_source_id  text,
    error_code                text,
    error_type                text,
    error_message             text,
    plaid_request_id          text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    version                   bigint NOT NULL DEFAULT 0,
    -- A worker driving the Item through its Plaid/Atomic calls holds a lease, so two deliveries of
    -- the same submission never exchange or submit at once.
    lease_owner               uuid,
    lease_until               timestamptz,
    CHECK ((access_token_sealed IS NULL) = (access_token_key_id IS NULL)),
    CHECK ((processor_token_sealed IS NULL) = (processor_token_key_id IS NULL))
);
CREATE INDEX items_state_updated_at ON items (state, updated_at);

CREATE TABLE item_history (
    id          bigserial PRIMARY KEY,
    item_id     uuid NOT NULL REFERENCES items (id),
    from_state  text,
    to_state    text NOT NULL,
    trigger     text NOT NULL,
    cause       text NOT NULL,
    event_id    text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX item_history_item ON item_history (item_id, id);

-- One row per event applied (or recorded): a redelivered or duplicated event finds its key here.
CREATE TABLE inbox (
    event_key    text PRIMARY KEY,
    item_id      uuid,
    routing_key  text NOT NULL,
    outcome      text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_item ON inbox (item_id, received_at);
