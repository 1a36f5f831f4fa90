// Package sqlcdb is the data-access code sqlc v1.31.1 generates (database/sql
// backend, emit_prepared_queries: true) from query.sql and schema.sql, for
// the tests of tenantpg under sqlc: New runs each query with the DBTX's
// QueryContext or ExecContext, Prepare prepares them all once and runs
// *sql.Stmt. The generated files are committed so that the build does not
// need sqlc (which needs cgo); regenerate them with
//
//	cd integration/orm && go generate ./sqlcdb
package sqlcdb

//go:generate go run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1 generate
