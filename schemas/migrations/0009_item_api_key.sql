-- Whose Item it is: the fingerprint (worker/items/model.py `api_key_fingerprint`, 16 hex digits of
-- the key's SHA-256, never the key) of the API key that submitted it with POST /v1/items. NULL: it
-- came over AMQP (or before this column existed). Outcome callbacks (PAW_CALLBACKS) are chosen by it.
ALTER TABLE items ADD COLUMN api_key_fingerprint text;
