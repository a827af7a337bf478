-- name: list_items_for_user
-- One page of an end user's Items in (updated_at, id) order, after the position ($2, $3): the
-- cursor's, else just before updated_since (or -infinity). One range scan of items_client_user_updated;
-- the state filter is applied on the way and the scan stops after $5 rows.
-- $1 client_user_id, $2 after updated_at (timestamptz), $3 after id (uuid), $4 states (text[]|null: any),
-- $5 limit
SELECT * FROM items
WHERE client_user_id = $1
  AND (updated_at, id) > ($2::timestamptz, $3::uuid)
  AND ($4::text[] IS NULL OR state = ANY($4::text[]))
ORDER BY updated_at, id
LIMIT $5;

-- name: list_items
-- The same page over every Item (no client_user_id): one range scan of items_updated.
-- $1 after updated_at (timestamptz), $2 after id (uuid), $3 states (text[]|null: any), $4 limit
SELECT * FROM items
WHERE (updated_at, id) > ($1::timestamptz, $2::uuid)
  AND ($3::text[] IS NULL OR state = ANY($3::text[]))
ORDER BY updated_at, id
LIMIT $4;
