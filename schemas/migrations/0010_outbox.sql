-- Outcome events (item.state.<to_state>), written by the statement that changes the Item's state, in
-- the same transaction (a transactional outbox): an event exists exactly when its transition
-- committed. The worker's relay (worker/events/relay.py) publishes unsent rows in id order with
-- publisher confirms, then sets sent_at; sent rows are pruned after PAW_OUTBOX_RETENTION_S.
-- sequence: the Item's version after the change, plus one (its creation is 1), so an Item's events
-- number 1, 2, 3 ... with no gap, as its history rows do.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL,
    item_id      uuid        NOT NULL,
    sequence     bigint      NOT NULL,
    routing_key  text        NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    UNIQUE (item_id, sequence)
);
-- What the relay reads: the unsent rows, oldest first (small: the relay keeps up).
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
