-- Conditions an Item's webhooks report besides its state.
ALTER TABLE items
    ADD COLUMN login_changed_at    bigint,       -- Plaid send time (JWT iat) of the last login event applied
    ADD COLUMN consent_expires_at  timestamptz,  -- ITEM PENDING_EXPIRATION
    ADD COLUMN disconnect_at       timestamptz,  -- ITEM PENDING_DISCONNECT
    ADD COLUMN disconnect_reason   text,
    ADD COLUMN atomic_removed_at   timestamptz;  -- Atomic told the funding source is gone

CREATE INDEX items_consent_expires_at ON items (consent_expires_at) WHERE consent_expires_at IS NOT NULL;
CREATE INDEX items_disconnect_at ON items (disconnect_at) WHERE disconnect_at IS NOT NULL;
