package orm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// nTenants is how many tenants every suite runs in parallel.
const nTenants = 12

// provision returns the tenant ids "o01".."o12", provisioned on env. The
// suites share them (each tenant database costs a CREATE DATABASE) and run
// one after another; each suite works on tables of its own or restores what
// it changed, and checks counts relative to what it found.
func provision(t *testing.T, env *pgtest.Env) []string {
	t.Helper()
	ids := make([]string, nTenants)
	for i := range ids {
		ids[i] = fmt.Sprintf("o%02d", i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := env.Provision(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	return ids
}

// userSchemas creates, in database app, a schema named after each tenant's
// login role "app.<t>" and owned by it: with PostgreSQL's default
// search_path ("$user", public) a session logged in as app.<t> resolves
// unqualified tables there, and no other tenant's login may use it. This is
// how the Supavisor-style route (tenant_user={user}.{tenant}) reaches
// per-tenant tables without naming the tenant in SQL.
func userSchemas(t *testing.T, env *pgtest.Env, ids []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, env.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var b strings.Builder
	for _, id := range ids {
		role := pgx.Identifier{pgtest.TenantRole(id)}.Sanitize()
		fmt.Fprintf(&b, "create schema if not exists %s authorization %s;\n", role, role)
	}
	if _, err := conn.Exec(ctx, b.String()); err != nil {
		t.Fatal(err)
	}
}

// superExec runs statements as the superuser in database, for test setup and
// for checks that must not go through tenantpg.
func superExec(t *testing.T, env *pgtest.Env, database, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
}

// withParams appends query parameters to a URL.
func withParams(url string, params ...string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + strings.Join(params, "&")
}

// Routes: the DSNs the suites open. pool_max_conns is small so that
// connections are reused across many operations.

// bouncerUserDSN is the Supavisor-style route through PgBouncer: login
// "app.<tenant>" to database app.
func bouncerUserDSN(env *pgtest.Env) string {
	return withParams(env.BouncerURL(env.AppUser, env.AppDatabase),
		"tenant_user={user}.{tenant}", "tenant_max_conns=24", "pool_max_conns=2")
}

// bouncerDatabaseDSN is the PgBouncer alias route: login app to database
// "<tenant>".
func bouncerDatabaseDSN(env *pgtest.Env) string {
	return withParams(env.BouncerURL(env.AppUser, env.AppDatabase),
		"tenant_database={tenant}", "tenant_max_conns=24", "pool_max_conns=2")
}

// directSchemaDSN is the schema-per-tenant route straight to PostgreSQL:
// login app to database app with search_path "<tenant>".
func directSchemaDSN(env *pgtest.Env) string {
	return withParams(env.DirectURL(env.AppUser, env.AppDatabase),
		"tenant_schema={tenant}", "tenant_max_conns=24", "pool_max_conns=2")
}

// directSettingDSN is the row-level-security route straight to PostgreSQL:
// login app to database app with app.tenant_id set to the tenant.
func directSettingDSN(env *pgtest.Env) string {
	return withParams(env.DirectURL(env.AppUser, env.AppDatabase),
		"tenant_setting=app.tenant_id", "tenant_max_conns=24", "pool_max_conns=2")
}

// openDB opens dsn with sql.Open("tenantpg") and closes it after the test.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("tenantpg", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxIdleConns(tenantpg.IdleHandles) // as docs/orms.md recommends
	t.Cleanup(func() { db.Close() })
	return db
}

// openTraced opens dsn with tenantpg.OpenDB and a pgx tracer that records
// every SQL text and argument list pgx is asked to run.
func openTraced(t *testing.T, dsn string) (*sql.DB, *recorder) {
	t.Helper()
	cfg, err := tenantpg.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg.Pool.ConnConfig.Tracer = rec
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, rec
}

// recorder is a pgx.QueryTracer keeping what pgx was asked to run.
type recorder struct {
	mu      sync.Mutex
	queries []traced
}

type traced struct {
	SQL  string
	Args []any
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	r.queries = append(r.queries, traced{d.SQL, d.Args})
	r.mu.Unlock()
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// matching returns the recorded queries whose SQL contains substr.
func (r *recorder) matching(substr string) []traced {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []traced
	for _, q := range r.queries {
		if strings.Contains(q.SQL, substr) {
			out = append(out, q)
		}
	}
	return out
}

// all returns every recorded query.
func (r *recorder) all() []traced { return r.matching("") }

// testCtx returns a context cancelled at the end of the test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// perTenant runs fn for every tenant, each in its own goroutine, all at
// once, and fails the test with every error.
func perTenant(t *testing.T, ctx context.Context, ids []string, fn func(ctx context.Context, tenant string) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	start := make(chan struct{})
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := fn(tenantpg.WithTenant(ctx, id), id); err != nil {
				errs[i] = fmt.Errorf("tenant %s: %w", id, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// sqlState returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// rounds is how many create/read/update/delete/transaction rounds every
// tenant runs in the CRUD suites.
const rounds = 8

// checkOwn fails unless every tenant value is want: the isolation assertion.
func checkOwn(want string, got []string) error {
	for _, g := range got {
		if g != want {
			return fmt.Errorf("saw a row of tenant %q", g)
		}
	}
	return nil
}

// stats returns tenantpg's statistics of db.
func stats(t *testing.T, db *sql.DB) tenantpg.Stats {
	t.Helper()
	st, err := tenantpg.DBStats(db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkPools asserts that db served every tenant from a pool of its own and
// reused connections: fewer dials than checkouts.
func checkPools(t *testing.T, db *sql.DB, ids []string) {
	t.Helper()
	st := stats(t, db)
	for _, id := range ids {
		p, ok := st.Tenant(id)
		if !ok {
			t.Errorf("tenant %s has no pool", id)
			continue
		}
		if len(p.Tenants) != 1 {
			t.Errorf("tenant %s shares a pool with %v", id, p.Tenants)
		}
		if p.Dials == 0 || p.Checkouts <= p.Dials {
			t.Errorf("tenant %s: %d dials for %d checkouts: connections not reused", id, p.Dials, p.Checkouts)
		}
	}
}
