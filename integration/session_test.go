package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// directUserDB routes tenants by login role straight to PostgreSQL, where
// session state stays on one server connection.
func directUserDB(t *testing.T, env *pgtest.Env, extra ...string) *sql.DB {
	return open(t, directUserDSN(env, extra...))
}

func directUserDSN(env *pgtest.Env, extra ...string) string {
	return withParams(env.DirectURL(env.AppUser, env.AppDatabase), append([]string{"tenant_user={user}.{tenant}"}, extra...)...)
}

// hookedUserDB is directUserDB opened with OpenDB, hooks setting each
// tenant pool's config (through Resolve); it is closed after the test.
func hookedUserDB(t *testing.T, env *pgtest.Env, hooks func(*pgxpool.Config), extra ...string) *sql.DB {
	t.Helper()
	cfg, err := tenantpg.ParseConfig(directUserDSN(env, extra...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolve = func(_ context.Context, _ string, pc *pgxpool.Config) error {
		hooks(pc)
		return nil
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestNoTenantFailsClosed(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	db := directUserDB(t, env)
	ctx := testCtx(t)

	_, err := db.ExecContext(ctx, "select 1")
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	_, err = db.QueryContext(ctx, "select 1")
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	err = db.QueryRowContext(ctx, "select 1").Scan(new(int))
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	_, err = db.BeginTx(ctx, nil)
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	_, err = db.PrepareContext(ctx, "select 1")
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	_, err = db.Exec("select 1") // non-ctx methods have no tenant either
	mustErrIs(t, err, tenantpg.ErrNoTenant)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.ExecContext(ctx, "select 1")
	mustErrIs(t, err, tenantpg.ErrNoTenant)

	// Ping (gorm.Open, sqlx.Connect) succeeds without opening anything.
	if err := db.Ping(); err != nil {
		t.Fatalf("tenant-less Ping: %v", err)
	}
	st := stats(t, db)
	if st.Dials != 0 || len(st.Pools) != 0 {
		t.Fatalf("tenant-less calls dialed %d times and created %d pools", st.Dials, len(st.Pools))
	}
	if st.NoTenant == 0 {
		t.Fatal("tenant-less checkouts not counted")
	}

	// A session opened without a tenant binds at its first operation whose
	// context has one, keeps that tenant's connection, and refuses another
	// tenant's statements: its first use chose whose session it is.
	user, err := queryString(tenantpg.WithTenant(ctx, "t01"), conn, "select current_user")
	if err != nil || user != "app.t01" {
		conn.Close()
		t.Fatalf("tenant-less session used with t01: %q, %v; want app.t01", user, err)
	}
	if _, err := conn.ExecContext(ctx, "set application_name = 'bound'"); err != nil {
		conn.Close()
		t.Fatalf("bound session, context without tenant: %v", err)
	}
	_, err = queryString(tenantpg.WithTenant(ctx, "t02"), conn, "select current_user")
	if !errors.Is(err, tenantpg.ErrSessionTenant) {
		conn.Close()
		t.Fatalf("session bound to t01, statement for t02: %v, want ErrSessionTenant", err)
	}
	name, err := queryString(tenantpg.WithTenant(ctx, "t01"), conn, "select current_setting('application_name')")
	conn.Close()
	if err != nil || name != "bound" {
		t.Fatalf("bound session lost its connection: %q, %v", name, err)
	}
	// NoTenant counts checkouts that ended unbound, and never goes down.
	if after := stats(t, db); after.NoTenant != st.NoTenant {
		t.Errorf("NoTenant = %d after a session that bound, want %d", after.NoTenant, st.NoTenant)
	}
	// After Close, Ping reports it.
	db.Close()
	if err := db.Ping(); err == nil {
		t.Fatal("Ping after Close succeeded")
	}
}

func TestPingTenantChecksServer(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, "tenant_ping=t01")
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, db); st.Dials != 1 {
		t.Fatalf("ping tenant dialed %d times, want 1", st.Dials)
	}
	// A ping tenant that the server rejects makes Ping fail.
	bad := directUserDB(t, env, "tenant_ping=nosuch")
	if err := bad.Ping(); !errors.Is(err, tenantpg.ErrTenantRejected) {
		t.Fatalf("Ping with unknown ping tenant = %v", err)
	}
}

func TestInvalidTenantsNeverDial(t *testing.T) {
	env := pgtest.Shared(t)
	db := directUserDB(t, env)
	ctx := testCtx(t)
	bad := []string{"", "a.b", "a'b", `a"b`, "a b", "a;b", "a\x00b", "ácme", "t\u200b01", "аcme",
		strings.Repeat("x", 60), // app. + 60 = 64 bytes: truncated by PostgreSQL
	}
	for _, id := range bad {
		_, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1")
		if !errors.Is(err, tenantpg.ErrInvalidTenant) {
			t.Errorf("tenant %q: %v, want ErrInvalidTenant", id, err)
		}
	}
	if st := stats(t, db); st.Dials != 0 || st.PoolsCreated != 0 {
		t.Fatalf("invalid tenants dialed %d times, created %d pools", st.Dials, st.PoolsCreated)
	}
}

func TestTxConnStmtRowsStayOnTenant(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	db := directUserDB(t, env)
	ctx := testCtx(t)
	a, b := tenantpg.WithTenant(ctx, "t01"), tenantpg.WithTenant(ctx, "t02")

	// Statements of a transaction run on its tenant whatever their ctx.
	tx, err := db.BeginTx(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []context.Context{a, b, ctx} {
		if u, err := queryString(c, tx, "select current_user"); err != nil || u != "app.t01" {
			t.Fatalf("tx statement: %q, %v", u, err)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	// A *sql.Conn keeps its session.
	conn, err := db.Conn(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(b, "set application_name = 'session-b'"); err != nil {
		t.Fatal(err)
	}
	var app, user string
	if err := conn.QueryRowContext(b, "select current_setting('application_name'), current_user").Scan(&app, &user); err != nil {
		t.Fatal(err)
	}
	if app != "session-b" || user != "app.t02" {
		t.Fatalf("session: %s %s", app, user)
	}
	// pgx-native access through Raw.
	err = conn.Raw(func(dc any) error {
		pc := dc.(*tenantpg.Conn).Conn()
		n, err := pc.CopyFrom(b, pgx.Identifier{"t02", "items"}, []string{"tenant", "val"},
			pgx.CopyFromRows([][]any{{"t02", 100}, {"t02", 101}}))
		if err == nil && n != 2 {
			err = fmt.Errorf("copied %d rows", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(b, "delete from t02.items where val >= 100"); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// A *sql.Stmt prepared for one tenant runs for the tenant of each call.
	stmt, err := db.PrepareContext(a, "select current_user")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for i := 0; i < 10; i++ {
		for c, want := range map[context.Context]string{a: "app.t01", b: "app.t02"} {
			var got string
			if err := stmt.QueryRowContext(c).Scan(&got); err != nil || got != want {
				t.Fatalf("stmt: %q, %v; want %q", got, err, want)
			}
		}
	}

	// Two streaming Rows of different tenants interleaved.
	ra, err := db.QueryContext(a, "select current_user, g from generate_series(1, 100) g")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := db.QueryContext(b, "select current_user, g from generate_series(1, 100) g")
	if err != nil {
		t.Fatal(err)
	}
	for ra.Next() && rb.Next() {
		var ua, ub string
		var ga, gb int
		if err := ra.Scan(&ua, &ga); err != nil {
			t.Fatal(err)
		}
		if err := rb.Scan(&ub, &gb); err != nil {
			t.Fatal(err)
		}
		if ua != "app.t01" || ub != "app.t02" || ga != gb {
			t.Fatalf("rows: %s %d / %s %d", ua, ga, ub, gb)
		}
	}
	ra.Close()
	rb.Close()

	// A query cancelled mid-way does not affect the next one.
	cctx, cancel := context.WithTimeout(a, 50*time.Millisecond)
	_, err = db.ExecContext(cctx, "select pg_sleep(5)")
	cancel()
	if err == nil {
		t.Fatal("cancelled query succeeded")
	}
	if u, err := queryString(a, db, "select current_user"); err != nil || u != "app.t01" {
		t.Fatalf("after cancel: %q, %v", u, err)
	}
	cctx, cancel = context.WithCancel(b)
	rows, err := db.QueryContext(cctx, "select g from generate_series(1, 100000) g")
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	cancel()
	for rows.Next() {
	}
	rows.Close()
	if u, err := queryString(b, db, "select current_user"); err != nil || u != "app.t02" {
		t.Fatalf("after cancelled rows: %q, %v", u, err)
	}
}

func TestIdlePoolingNeverCrossesTenants(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	// sql.Open keeps 2 idle connections by default; raise it further.
	for _, idle := range []int{-1, 2, 16} {
		t.Run(fmt.Sprint("idle=", idle), func(t *testing.T) {
			db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"))
			if idle >= 0 {
				db.SetMaxIdleConns(idle)
			}
			errs := hammer(t, ids, 16, 3000, func(ctx context.Context, tenant string, i int) error {
				if i%10 == 0 { // tenant-less calls mixed in
					if _, err := db.ExecContext(context.Background(), "select 1"); !errors.Is(err, tenantpg.ErrNoTenant) {
						return fmt.Errorf("tenant-less exec: %v", err)
					}
				}
				u, err := queryString(ctx, db, "select current_user")
				if err != nil {
					return err
				}
				if u != "app."+tenant {
					return fmt.Errorf("current_user %q", u)
				}
				return nil
			})
			if errs != 0 {
				t.Fatalf("%d failures", errs)
			}
		})
	}
}

func TestIdentityCheck(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	// Log in as the superuser but switch role at startup: the session is
	// not the login the tenant's target names, as with a pooler that maps
	// logins.
	cfg, err := tenantpg.ParseConfig(withParams(env.DirectURL(env.SuperUser, env.AppDatabase), "tenant_schema={tenant}"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pool.ConnConfig.RuntimeParams["role"] = "app.t01"
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, "select 1")
	var ie *tenantpg.IdentityError
	if !errors.As(err, &ie) || ie.Field != "user" || ie.Got != "app.t01" || ie.Want != env.SuperUser {
		t.Fatalf("err = %v, want an *IdentityError on user", err)
	}
	if st := stats(t, db); st.OpenConns != 0 {
		t.Fatalf("%d connections left open after a failed identity check", st.OpenConns)
	}

	// Turned off, the same configuration connects.
	cfg.Verify = "off"
	db2, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if u, err := queryString(ctx, db2, "select current_user"); err != nil || u != "app.t01" {
		t.Fatalf("verify=off: %q, %v", u, err)
	}
}

func TestBouncerRefusesSchemaWithHint(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_schema={tenant}"))
	_, err := db.ExecContext(tenantpg.WithTenant(testCtx(t), "t01"), "select 1")
	if err == nil || !strings.Contains(err.Error(), "tenant_user or tenant_database") {
		t.Fatalf("err = %v, want the pooler hint", err)
	}
	if errors.Is(err, tenantpg.ErrTenantRejected) {
		t.Fatal("a configuration problem was cached as a tenant rejection")
	}
}
