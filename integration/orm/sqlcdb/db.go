// Package sqlcdb is data-access code in the shape sqlc generates (sqlc v1,
// database/sql backend): a DBTX interface that *sql.DB, *sql.Tx and
// *sql.Conn satisfy, a Queries struct and one method per query of
// query.sql. It is written by hand to keep sqlc out of the build; the
// tests use it exactly as generated code is used.
package sqlcdb

import (
	"context"
	"database/sql"
)

// DBTX is what the queries run on.
type DBTX interface {
	ExecContext(context.Context, string, ...interface{}) (sql.Result, error)
	PrepareContext(context.Context, string) (*sql.Stmt, error)
	QueryContext(context.Context, string, ...interface{}) (*sql.Rows, error)
	QueryRowContext(context.Context, string, ...interface{}) *sql.Row
}

var (
	_ DBTX = (*sql.DB)(nil)
	_ DBTX = (*sql.Tx)(nil)
	_ DBTX = (*sql.Conn)(nil)
)

// New returns the queries over db.
func New(db DBTX) *Queries {
	return &Queries{db: db}
}

// Queries runs the queries of query.sql.
type Queries struct {
	db DBTX
}

// WithTx returns the queries over tx.
func (q *Queries) WithTx(tx *sql.Tx) *Queries {
	return &Queries{
		db: tx,
	}
}
