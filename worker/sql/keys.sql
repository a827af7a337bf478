-- name: sealed_key_ids
-- Every key id some row is sealed with, and one row sealed with it (to test the key opens it).
SELECT DISTINCT ON (key_id) key_id, id, col, sealed FROM (
    SELECT access_token_key_id AS key_id, id, 'access_token' AS col, access_token_sealed AS sealed
    FROM items WHERE access_token_key_id IS NOT NULL
    UNION ALL
    SELECT processor_token_key_id, id, 'processor_token', processor_token_sealed
    FROM items WHERE processor_token_key_id IS NOT NULL
) AS s
ORDER BY key_id, id;

-- name: count_not_on_key
-- $1 active key id
SELECT count(*) FROM items
WHERE access_token_key_id <> $1 OR processor_token_key_id <> $1;

-- name: lock_batch_not_on_key
-- Rows still sealed with another key; rows a worker holds right now are skipped and come back in a
-- later batch. $1 active key id, $2 batch size
SELECT id, access_token_key_id, access_token_sealed, processor_token_key_id, processor_token_sealed
FROM items
WHERE access_token_key_id <> $1 OR processor_token_key_id <> $1
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: reseal
-- $1 id, $2 access key id, $3 access sealed, $4 processor key id, $5 processor sealed
UPDATE items SET
    access_token_key_id = $2, access_token_sealed = $3,
    processor_token_key_id = $4, processor_token_sealed = $5
WHERE id = $1;
