-- What the receivers saw, per minute: webhooks received, accepted and refused (by reason) per source,
-- and publishes the broker did not confirm. Each receiver adds its counts every few seconds
-- (webhooks/tallies.py); `paw status` reads the last hour and the last webhook received. Kept 7 days.
CREATE TABLE receiver_minutes (
    minute   timestamptz NOT NULL,
    source   text        NOT NULL,            -- plaid, atomic; '' for publish failures
    outcome  text        NOT NULL,            -- received, accepted, rejected, key_unavailable, publish_failed
    reason   text        NOT NULL DEFAULT '', -- why it was rejected
    n        bigint      NOT NULL,
    last_at  timestamptz NOT NULL,            -- the latest report that added to it
    PRIMARY KEY (minute, source, outcome, reason)
);
-- The last webhook received per source: one index probe from the newest minute down.
CREATE INDEX receiver_minutes_latest ON receiver_minutes (outcome, source, minute);
