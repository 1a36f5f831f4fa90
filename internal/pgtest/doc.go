// Package pgtest is the integration-test harness of tenantpg: it starts a
// throwaway PostgreSQL cluster plus a PgBouncer in front of it and provisions
// them for a set of tenants.
//
// # Servers
//
// [Start] runs initdb, starts postgres on a free 127.0.0.1 port and a PgBouncer
// (transaction pool mode, "*" fallback database routed to that PostgreSQL) on
// another free port, then calls [Env.Provision]. [StartPostgres] starts only a
// PostgreSQL cluster, for tests that route tenants to different servers.
//
// The binaries are looked up in this order:
//
//   - PostgreSQL (initdb, postgres): $TENANTPG_TEST_PG_BINDIR, then the highest
//     version under /usr/lib/postgresql/*/bin (Debian/Ubuntu layout), then
//     initdb on $PATH.
//   - PgBouncer: $TENANTPG_TEST_PGBOUNCER, /usr/sbin/pgbouncer, then $PATH.
//
// When the test binary runs as root, initdb, postgres and pgbouncer run as
// the OS user "postgres" (they refuse to run as root); the temporary
// directory is chowned to that user. Every child process gets
// Pdeathsig=SIGKILL, so nothing outlives the test binary, and Close kills and
// reaps them. Temporary directories left by killed test processes are
// removed by the next harness start.
//
// # Provisioning
//
// For every tenant t (lower-case ASCII letters, digits, '_' and '-'),
// Provision creates, idempotently:
//
//   - the login role "app" (not superuser, NOBYPASSRLS) and the login role
//     "app.<t>", both with password AppPassword (SCRAM-SHA-256);
//   - the database "app" (owner app) with schema "<t>" (owner "app.<t>")
//     containing "<t>".items(id serial, tenant text, val int) with 3 rows of
//     tenant t; app has all privileges on the schema and DML on the table;
//   - in database "app", the table public.docs(id, tenant_id, body) owned by
//     the superuser, with ENABLE and FORCE ROW LEVEL SECURITY and the policy
//     tenant_id = current_setting('app.tenant_id', true), holding 2 rows per
//     tenant; app and every "app.<t>" have all privileges on it;
//   - the database "<t>" (owner "app.<t>"), which PgBouncer's "*" fallback
//     exposes under the alias "<t>"; it holds public.items (same shape, 3
//     rows of tenant t, owner "app.<t>"), app may connect and run DML on it.
//
// # Shared environment
//
// [Shared] returns one package-wide [Env] started on first use with
// [DefaultTenants]; pair it with [Main] in TestMain so it is torn down:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// If the binaries are missing, Shared skips the test, or fails it when the
// environment variable CI is set to anything but "", "0", "false" or "no"
// ("true" in most CI systems). [RequireBinaries] applies the
// same rule for tests that call [Start] or [StartPostgres] themselves.
//
// # External servers
//
// Shared can use already running servers instead of starting its own:
//
//   - TENANTPG_TEST_PG_URL: URL of a superuser of a running PostgreSQL
//     (for example postgres://postgres:secret@127.0.0.1:5432/postgres).
//     Shared provisions the tenants there instead of running initdb.
//   - TENANTPG_TEST_PGBOUNCER_ADDR: host:port of a running PgBouncer that
//     routes "*" to that PostgreSQL in transaction pool mode, whose auth file
//     contains app and app.<t> for every tenant the tests use with password
//     AppPassword, and whose admin_users contains the superuser of
//     TENANTPG_TEST_PG_URL (for [Env.BouncerAdmin]). Only meaningful together
//     with TENANTPG_TEST_PG_URL; without it a local pgbouncer is started in
//     front of the external PostgreSQL.
//   - TENANTPG_TEST_APP_PASSWORD: password of app and app.<t> (default
//     [DefaultAppPassword]); it must match the external PgBouncer auth file.
//
// In external mode [Env.Close] never stops those servers, and the restart
// helpers ([Env.RestartPostgres], [Env.RestartBouncer], ...) return an error.
//
// # Using PgBouncer 1.18 with pgx
//
//   - PgBouncer 1.18 does not support named prepared statements in
//     transaction mode, so pgx's default exec mode (cache_statement) fails
//     through [Env.BouncerURL] with "prepared statement stmtcache_... already
//     exists / does not exist". Use default_query_exec_mode=simple_protocol,
//     exec, cache_describe or describe_exec.
//   - PgBouncer rejects unknown startup parameters with "FATAL: unsupported
//     startup parameter" (08P01); this includes app.tenant_id, search_path
//     and options. Only extra_float_digits is ignored by the harness
//     configuration; application_name, client_encoding, DateStyle, TimeZone
//     and standard_conforming_strings are tracked by PgBouncer. Per-tenant
//     settings must therefore be sent with SET / set_config through
//     PgBouncer, while a direct connection accepts them as startup
//     parameters.
//   - The harness sets server_login_retry=1 and server_connect_timeout=5
//     (defaults 15) so PgBouncer reconnects quickly after
//     [Env.RestartPostgres]; [Options.BouncerSettings] overrides any key.
package pgtest
