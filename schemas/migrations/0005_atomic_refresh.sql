-- AUTH DEFAULT_UPDATE changed the funding account's numbers: Atomic must re-pull them.
ALTER TABLE items ADD COLUMN atomic_refresh_needed_at timestamptz;
