-- Finding Items (GET /v1/items): keyset pages in (updated_at, id) order, for one end user or for
-- all. Each page is one index range scan that stops after `limit` rows, never a sort of the table.
-- A plain CREATE INDEX holds writes to items while it builds (about a second per million rows);
-- migrations run in a transaction, which CREATE INDEX CONCURRENTLY cannot.
CREATE INDEX items_client_user_updated ON items (client_user_id, updated_at, id);
CREATE INDEX items_updated ON items (updated_at, id);
