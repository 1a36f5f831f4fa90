-- name: CreateItem :one
INSERT INTO items (tenant, val) VALUES ($1, $2) RETURNING id, tenant, val;

-- name: GetItem :one
SELECT id, tenant, val FROM items WHERE id = $1;

-- name: ListItems :many
SELECT id, tenant, val FROM items ORDER BY id;

-- name: UpdateItemVal :execrows
UPDATE items SET val = $2 WHERE id = $1;

-- name: DeleteItem :execrows
DELETE FROM items WHERE id = $1;

-- name: CurrentIdentity :one
SELECT current_user::text AS login, current_database()::text AS database;

-- name: ListDocs :many
SELECT id, tenant_id, body FROM docs ORDER BY id;

-- name: CreateDoc :one
INSERT INTO docs (tenant_id, body) VALUES ($1, $2) RETURNING id, tenant_id, body;
