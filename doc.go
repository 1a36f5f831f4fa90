// Package tenantpg is a database/sql driver for PostgreSQL that routes every
// connection to the tenant carried by the caller's context.Context.
//
// Multi-tenant poolers pick the tenant from the connection settings:
// Supavisor from the login user "user.tenant", PgBouncer from a database
// alias per tenant; other setups use a schema per tenant, a setting read by
// row-level security policies, or a different host and password per tenant.
// tenantpg rewrites one base DSN for each tenant, keeps a pgxpool.Pool per
// distinct result under a single *sql.DB, and so gives GORM, sqlx, ent, bun,
// sqlc and plain database/sql multitenancy by passing a context:
//
//	db, err := sql.Open("tenantpg",
//		"postgres://app:secret@pooler:6543/postgres?tenant_user={user}.{tenant}")
//	...
//	db.SetMaxIdleConns(tenantpg.IdleHandles) // idle handles hold no connection
//	ctx := tenantpg.WithTenant(r.Context(), "acme")
//	rows, err := db.QueryContext(ctx, "select ...") // logs in as app.acme
//
// # DSN
//
// The DSN is a PostgreSQL URL or keyword/value string as pgx and pgxpool
// accept it, plus parameters whose names start with "tenant_". Those are
// tenantpg's; they are removed before pgx sees the rest, and an unknown one
// is an error. In templates, {tenant} is the tenant id and {user} and
// {database} are the base DSN's values.
//
//	tenant_user        login user template, e.g. {user}.{tenant} (Supavisor)
//	tenant_database    database template, e.g. {tenant} (PgBouncer alias)
//	tenant_schema      search_path template, e.g. {tenant} or t_{tenant},public;
//	                   each name is quoted and sent as a startup parameter
//	tenant_setting     setting name, e.g. app.tenant_id, sent as a startup
//	                   parameter whose value is the tenant id (for RLS)
//	tenant_pattern     regular expression a tenant id must match as a whole
//	                   (default [A-Za-z0-9_-]+)
//	tenant_max_conns   physical connections across all tenants (default: no cap)
//	tenant_pool_idle   how long an unused tenant pool lives (default 5m; 0: forever)
//	tenant_reject_ttl  how long a rejected tenant fails fast (default 10s; 0: off)
//	tenant_verify      identity check per new connection: on (default), off,
//	                   or a list of user,database,schema,setting
//	tenant_ping        tenant whose pool a tenant-less Ping checks
//
// Per-tenant pool sizes use pgxpool's names (pool_max_conns, default 4 here,
// pool_max_conn_idle_time, ...). A DSN that rewrites nothing is an error;
// use Config.Resolve to route tenants in Go instead (different hosts,
// passwords, TLS).
//
// # Exec mode
//
// Unless the DSN sets default_query_exec_mode, a DSN with tenant_user or
// tenant_database (a pooler route) uses pgx's "exec" mode: pgx's default
// "cache_statement" fails with 42P05 behind a transaction pooler without
// prepared-statement support (PgBouncer before 1.21, Supavisor by default),
// and "describe_exec" silently returns other clients' results there, so it is
// refused. Direct routes keep pgx's default, which measured about 1.45x
// faster for a small parameterised query against a local PostgreSQL.
//
// # Routing guarantees
//
// database/sql holds tenantpg handles (*Conn), not server connections. Each
// checkout binds its handle to a connection of the caller's tenant: Connect
// for a new handle, ResetSession for one database/sql reuses from its idle
// pool. When database/sql takes the handle back, the connection is parked
// with its tenant's pool for that tenant's next checkout, and the handle
// waits without a connection. Idle handles are interchangeable, so
// database/sql's idle pool never offers a tenant another tenant's
// connection, and same-tenant reuse costs what database/sql's own idle reuse
// costs. Transactions, *sql.Conn sessions, streaming Rows and *sql.Stmt
// executions (run on each checkout's connection) therefore run on a
// connection of the tenant whose context opened them. A parked connection
// goes back to pgxpool within a second, and one in constant use at the end
// of a checkout once it has been held for 10 seconds (or the pool's
// pool_max_conn_lifetime if shorter), so that pgxpool's lifetime, idle-time,
// health and Reset rules apply; it goes back at once when a caller waits in
// pgxpool for that pool or a budget waiter should get its slot; eviction
// treats it as idle.
//
// OpenDB lets database/sql keep IdleHandles idle handles. sql.Open keeps
// database/sql's default of 2: call db.SetMaxIdleConns(tenantpg.IdleHandles),
// or at least your number of concurrent queries, for the same speed.
// SetMaxIdleConns(0) is correct but creates a handle per checkout.
//
// A context without a tenant fails closed: queries, execs, transactions and
// prepares return ErrNoTenant and open nothing. Ping is the exception,
// because gorm.Open and sqlx.Connect ping without a context and a failed
// ping makes them fail: a tenant-less Ping only checks that the connector is
// open, or, with tenant_ping, pings that tenant's pool. A *sql.Conn opened
// without a tenant binds to the tenant of its first operation that has one
// and keeps that tenant's connection; its operations for another tenant
// fail with ErrSessionTenant.
//
// Tenant ids are validated before any network I/O: they must match the
// pattern, be valid UTF-8 without NUL, and every rewritten user, database and
// schema name must fit PostgreSQL's 63-byte limit, since the server would
// silently truncate it and two tenants could share a login. Otherwise the
// error matches ErrInvalidTenant.
//
// Once per new physical connection tenantpg checks that current_user,
// current_database() and, where rewritten, search_path and the setting are
// what the tenant's target says (tenant_verify). A mismatch is an
// *IdentityError and the connection is closed.
//
// # Budget, idle pools, rejected tenants
//
// tenant_max_conns caps physical connections across all pools. When it is
// full, a new connection first evicts an idle connection of the least
// recently used tenant (closing its pool once empty and unused); otherwise
// the caller waits in Connect, bounded by its context, and fails with a
// *BudgetError. Fairness: a freed slot goes to the waiting tenant with the
// fewest connections, and while a tenant with at least two fewer (or none)
// waits, connections released by bigger tenants are closed rather than kept,
// so one busy tenant cannot starve the others. Pools unused for
// tenant_pool_idle are closed. A tenant the pooler or server rejects at login
// (unknown Supavisor tenant, unknown PgBouncer alias, missing database or
// role, bad password) gets a *RejectedError wrapping the server's
// *pgconn.PgError, and further requests for it fail from a negative cache for
// tenant_reject_ttl without dialing; only one connection attempt at a time
// reaches a pool that has never connected.
//
// A tenant keeps its pool, and so the target it was resolved to, while it
// is in use. Connector.Forget drops it: the tenant's next request resolves
// again (after a move to another server, or new credentials behind
// Resolve), and its pool, unless other tenants share it, closes as soon as
// nothing uses it, which is what dropping a departed tenant's database
// needs.
//
// # Limits of database/sql
//
// db.SetMaxOpenConns caps handles, that is concurrent checkouts across all
// tenants; tenant_max_conns and pool_max_conns cap server connections. With
// it, database/sql opens handles for queued callers in the background with a
// context of its own and hands them over without ResetSession: such a
// checkout binds at its first operation, so inside (*sql.Conn).Raw use
// (*Conn).ConnContext rather than Conn.
//
// db.Stats() counts handles, not server connections; DBStats counts those.
// A *sql.Stmt (db.Prepare, GORM PrepareStmt, sqlx Preparex) keeps no named
// statement on the server: Prepare checks the query with an unnamed Parse
// and Describe, and each execution runs the query on its checkout's
// connection in the DSN's default_query_exec_mode, as a plain query would.
// It therefore works through transaction poolers, and costs no Prepare or
// Deallocate per checkout; with cache_statement it stays prepared per
// connection.
//
// On connections without a tracer whose exec mode is cache_statement or
// exec, tenantpg sends database/sql's queries (and execs with arguments)
// through pgconn itself, with pgx's argument encoding and, under
// cache_statement, a statement cache of its own with pgx's policy
// (statement_cache_capacity, statements named tenantpg_<digest>). A query
// whose text names a statement prepared with pgx.Conn.Prepare, one with pgx
// query options among its arguments, and every query on a connection with
// a tracer go through pgx. Statements deallocated by other code
// (pgx.Conn.DeallocateAll or DISCARD ALL inside Raw, in pgx-native code, in
// the pool's acquire and release hooks, or sent through database/sql) are
// prepared again, also inside transactions.
//
// Query results reach database/sql as pgx's stdlib gives them (the same Go
// type per column type, the same column metadata, and on Go 1.27 the same
// scanning into pgx types), but tenantpg keeps the scan plans with each
// connection instead of planning every query again. A type registered
// inside (*sql.Conn).Raw applies from the next query on; register types
// in an AfterConnect hook rather than from a query tracer.
//
// Stats and per-tenant pools are reachable from a *sql.DB with DBStats,
// ConnectorOf and Pool; inside (*sql.Conn).Raw the driver connection is a
// *Conn, whose ConnContext method returns the tenant's *pgx.Conn.
package tenantpg
