// Package orm tests tenantpg under GORM, sqlx, ent, bun and sqlc's generated code
// against a real PostgreSQL and PgBouncer (internal/pgtest). It is a module
// of its own so that the ORMs stay out of the library's go.mod.
//
// Routes covered (see docs/orms.md):
//
//   - PgBouncer, Supavisor-style login: tenant_user={user}.{tenant}; each
//     login app.<t> owns a schema named after it, so PostgreSQL's default
//     search_path ("$user", public) resolves unqualified tables there.
//   - PgBouncer, database alias per tenant: tenant_database={tenant}.
//   - Direct, schema per tenant: tenant_schema={tenant} (PgBouncer 1.18
//     rejects the search_path startup parameter).
//   - Direct, row-level security: tenant_setting=app.tenant_id.
//
// Prepared-statement modes run on every route, PgBouncer 1.18 in
// transaction mode included, since tenantpg's *sql.Stmt keeps no named
// statement on the server: GORM PrepareStmt and sqlx Preparex/PrepareNamed
// are tested on all four, sqlc's emit_prepared_queries on the alias route
// and a direct route that sets both a schema and the RLS setting.
package orm
