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

-- name: find_items
-- Items any id support has names, at most $4: paw's id, or a prefix of it as the id range [$2, $3]
-- (both null: the text is no id prefix), client_user_id, Plaid's item_id, Atomic's funding source
-- id, the submission's request_id or the Plaid request_id of the last call. Each arm is one index
-- lookup; an Item found twice is listed once.
-- $1 the text, $2 lowest id (uuid|null), $3 highest id (uuid|null), $4 limit
SELECT * FROM (
    SELECT * FROM items WHERE id BETWEEN $2::uuid AND $3::uuid
    UNION
    SELECT * FROM items WHERE client_user_id = $1
    UNION
    SELECT * FROM items WHERE plaid_item_id = $1
    UNION
    SELECT * FROM items WHERE atomic_funding_source_id = $1
    UNION
    SELECT * FROM items WHERE submission_request_id = $1
    UNION
    SELECT * FROM items WHERE plaid_request_id = $1
) AS found
ORDER BY updated_at DESC, id
LIMIT $4;

-- name: filter_items
-- `paw item list` and the console's Items page: the latest changed first, with optional filters
-- (null: any), in pages (keyset: the page after the Item at ($7, $8)).
-- $1 states (text[]), $2 error_code, $3 updated since, $4 updated until, $5 client_user_id, $6 limit,
-- $7 before updated_at, $8 before id
SELECT * FROM items
WHERE ($1::text[] IS NULL OR state = ANY($1::text[]))
  AND ($2::text IS NULL OR error_code = $2)
  AND ($3::timestamptz IS NULL OR updated_at >= $3)
  AND ($4::timestamptz IS NULL OR updated_at < $4)
  AND ($5::text IS NULL OR client_user_id = $5)
  AND ($7::timestamptz IS NULL OR (updated_at, id) < ($7, $8::uuid))
ORDER BY updated_at DESC, id DESC
LIMIT $6;
