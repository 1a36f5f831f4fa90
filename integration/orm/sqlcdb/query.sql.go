// source: query.sql

package sqlcdb

import (
	"context"
)

const createDoc = `-- name: CreateDoc :one
INSERT INTO docs (tenant_id, body) VALUES ($1, $2) RETURNING id, tenant_id, body
`

type CreateDocParams struct {
	TenantID string
	Body     string
}

func (q *Queries) CreateDoc(ctx context.Context, arg CreateDocParams) (Doc, error) {
	row := q.db.QueryRowContext(ctx, createDoc, arg.TenantID, arg.Body)
	var i Doc
	err := row.Scan(&i.ID, &i.TenantID, &i.Body)
	return i, err
}

const createItem = `-- name: CreateItem :one
INSERT INTO items (tenant, val) VALUES ($1, $2) RETURNING id, tenant, val
`

type CreateItemParams struct {
	Tenant string
	Val    int32
}

func (q *Queries) CreateItem(ctx context.Context, arg CreateItemParams) (Item, error) {
	row := q.db.QueryRowContext(ctx, createItem, arg.Tenant, arg.Val)
	var i Item
	err := row.Scan(&i.ID, &i.Tenant, &i.Val)
	return i, err
}

const currentIdentity = `-- name: CurrentIdentity :one
SELECT current_user::text AS login, current_database()::text AS database
`

type CurrentIdentityRow struct {
	Login    string
	Database string
}

func (q *Queries) CurrentIdentity(ctx context.Context) (CurrentIdentityRow, error) {
	row := q.db.QueryRowContext(ctx, currentIdentity)
	var i CurrentIdentityRow
	err := row.Scan(&i.Login, &i.Database)
	return i, err
}

const deleteItem = `-- name: DeleteItem :execrows
DELETE FROM items WHERE id = $1
`

func (q *Queries) DeleteItem(ctx context.Context, id int32) (int64, error) {
	result, err := q.db.ExecContext(ctx, deleteItem, id)
	if err != nil {
		return 0, err
	}
	return result.RowsAffected()
}

const getItem = `-- name: GetItem :one
SELECT id, tenant, val FROM items WHERE id = $1
`

func (q *Queries) GetItem(ctx context.Context, id int32) (Item, error) {
	row := q.db.QueryRowContext(ctx, getItem, id)
	var i Item
	err := row.Scan(&i.ID, &i.Tenant, &i.Val)
	return i, err
}

const listDocs = `-- name: ListDocs :many
SELECT id, tenant_id, body FROM docs ORDER BY id
`

func (q *Queries) ListDocs(ctx context.Context) ([]Doc, error) {
	rows, err := q.db.QueryContext(ctx, listDocs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var items []Doc
	for rows.Next() {
		var i Doc
		if err := rows.Scan(&i.ID, &i.TenantID, &i.Body); err != nil {
			return nil, err
		}
		items = append(items, i)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return items, nil
}

const listItems = `-- name: ListItems :many
SELECT id, tenant, val FROM items ORDER BY id
`

func (q *Queries) ListItems(ctx context.Context) ([]Item, error) {
	rows, err := q.db.QueryContext(ctx, listItems)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var items []Item
	for rows.Next() {
		var i Item
		if err := rows.Scan(&i.ID, &i.Tenant, &i.Val); err != nil {
			return nil, err
		}
		items = append(items, i)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return items, nil
}

const updateItemVal = `-- name: UpdateItemVal :execrows
UPDATE items SET val = $2 WHERE id = $1
`

type UpdateItemValParams struct {
	ID  int32
	Val int32
}

func (q *Queries) UpdateItemVal(ctx context.Context, arg UpdateItemValParams) (int64, error) {
	result, err := q.db.ExecContext(ctx, updateItemVal, arg.ID, arg.Val)
	if err != nil {
		return 0, err
	}
	return result.RowsAffected()
}
