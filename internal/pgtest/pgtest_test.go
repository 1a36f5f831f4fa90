package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

// testCtx returns a context bounded well below the test timeout.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a pgx connection and closes it at the end of the test.
func connect(t *testing.T, ctx context.Context, url string, params map[string]string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func queryInt(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestBouncerTenantUser(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	conn := connect(t, ctx, env.BouncerURL("app.t01", env.AppDatabase), nil)
	if got := queryString(t, ctx, conn, "select current_user"); got != "app.t01" {
		t.Fatalf("current_user = %q, want app.t01", got)
	}
	if got := queryInt(t, ctx, conn, `select count(*) from t01.items where tenant = 't01'`); got != 3 {
		t.Fatalf("t01.items has %d rows, want 3", got)
	}
}

func TestBouncerDatabaseAlias(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	conn := connect(t, ctx, env.BouncerURL(env.AppUser, "t02"), nil)
	if got := queryString(t, ctx, conn, "select current_database()"); got != "t02" {
		t.Fatalf("current_database() = %q, want t02", got)
	}
	if got := queryString(t, ctx, conn, "select current_user"); got != "app" {
		t.Fatalf("current_user = %q, want app", got)
	}
	if got := queryInt(t, ctx, conn, `select count(*) from items where tenant = 't02'`); got != 3 {
		t.Fatalf("items in t02 has %d rows of t02, want 3", got)
	}
}

func TestSchemaPerTenant(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	conn := connect(t, ctx, env.DirectURL(env.AppUser, env.AppDatabase), map[string]string{"search_path": "t03"})
	if got := queryInt(t, ctx, conn, `select count(*) from items where tenant = 't03'`); got != 3 {
		t.Fatalf("items via search_path t03: %d rows, want 3", got)
	}
	// app may write to tenant tables.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `insert into items (tenant, val) values ('t03', 42)`); err != nil {
		t.Fatalf("insert as app: %v", err)
	}
}

func TestRLSStartupParameter(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	conn := connect(t, ctx, env.DirectURL(env.AppUser, env.AppDatabase), map[string]string{"app.tenant_id": "t01"})
	if got := queryInt(t, ctx, conn, "select count(*) from docs"); got != 2 {
		t.Fatalf("docs visible for t01: %d, want 2", got)
	}
	if got := queryInt(t, ctx, conn, "select count(*) from docs where tenant_id <> 't01'"); got != 0 {
		t.Fatalf("%d docs of other tenants visible", got)
	}
	// WITH CHECK rejects rows of other tenants.
	if _, err := conn.Exec(ctx, "insert into docs (tenant_id, body) values ('t02', 'x')"); err == nil ||
		!strings.Contains(err.Error(), "row-level security") {
		t.Fatalf("insert of foreign tenant row: err = %v, want RLS violation", err)
	}

	// Without the setting nothing is visible, also for tenant roles.
	conn2 := connect(t, ctx, env.DirectURL("app.t02", env.AppDatabase), nil)
	if got := queryInt(t, ctx, conn2, "select count(*) from docs"); got != 0 {
		t.Fatalf("docs visible without app.tenant_id: %d, want 0", got)
	}
	if got := queryInt(t, ctx, conn2, "select count(*) from docs where tenant_id = current_setting('app.tenant_id', true)"); got != 0 {
		t.Fatalf("unexpected rows: %d", got)
	}
	// Through PgBouncer the setting has to be SET per transaction.
	conn3 := connect(t, ctx, env.BouncerURL(env.AppUser, env.AppDatabase), nil)
	var n int
	err := pgx.BeginFunc(ctx, conn3, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select set_config('app.tenant_id', 't04', true)"); err != nil {
			return err
		}
		return tx.QueryRow(ctx, "select count(*) from docs where tenant_id = 't04'").Scan(&n)
	})
	if err != nil || n != 2 {
		t.Fatalf("docs of t04 through PgBouncer: n=%d err=%v, want 2", n, err)
	}
}

func TestServerConnections(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	// app.t05 is used by no other test of this package.
	if n, err := env.WaitServerConnections(ctx, "app.t05", 0); err != nil {
		t.Fatalf("before: %d, %v", n, err)
	}
	conn, err := connectURL(ctx, env.DirectURL("app.t05", env.AppDatabase), false)
	if err != nil {
		t.Fatal(err)
	}
	n, err := env.ServerConnections(ctx, "app.t05")
	if err != nil || n != 1 {
		t.Fatalf("ServerConnections(app.t05) = %d, %v; want 1", n, err)
	}
	all, err := env.ServerConnections(ctx, "")
	if err != nil || all < 1 {
		t.Fatalf("ServerConnections(\"\") = %d, %v; want >= 1", all, err)
	}
	conn.Close(ctx)
	if n, err := env.WaitServerConnections(ctx, "app.t05", 0); err != nil {
		t.Fatalf("after close: %d, %v", n, err)
	}
}

func TestProvisionIdempotent(t *testing.T) {
	env := Shared(t)
	ctx := testCtx(t)
	const tenant = "x_new-1" // needs quoting everywhere
	for i := 0; i < 2; i++ {
		env.pg.prov.forget() // re-run every statement
		if err := env.Provision(ctx, tenant, "t01"); err != nil {
			t.Fatalf("Provision #%d: %v", i+1, err)
		}
	}
	super := connect(t, ctx, env.DirectURL(env.SuperUser, env.AppDatabase), nil)
	if got := queryInt(t, ctx, super, `select count(*) from "x_new-1".items`); got != 3 {
		t.Fatalf("items of %s: %d, want 3", tenant, got)
	}
	if got := queryInt(t, ctx, super, `select count(*) from docs where tenant_id = 'x_new-1'`); got != 2 {
		t.Fatalf("docs of %s: %d, want 2", tenant, got)
	}
	if got := queryInt(t, ctx, super, `select count(*) from docs where tenant_id = 't01'`); got != 2 {
		t.Fatalf("docs of t01: %d, want 2", got)
	}
	if got := queryString(t, ctx, super, `select r.rolname from pg_class c join pg_roles r on r.oid = c.relowner where c.oid = '"x_new-1".items'::regclass`); got != "app.x_new-1" {
		t.Fatalf("owner of items: %q", got)
	}
	var super2, bypass bool
	if err := super.QueryRow(ctx, `select rolsuper, rolbypassrls from pg_roles where rolname = 'app'`).Scan(&super2, &bypass); err != nil || super2 || bypass {
		t.Fatalf("app: super=%v bypassrls=%v err=%v", super2, bypass, err)
	}

	// The new role was added to PgBouncer's auth file and reloaded (not
	// possible with an external PgBouncer).
	if env.bouncer == nil {
		return
	}
	conn := connect(t, ctx, env.BouncerURL(TenantRole(tenant), tenant), nil)
	if got := queryString(t, ctx, conn, "select current_user || '@' || current_database()"); got != "app.x_new-1@x_new-1" {
		t.Fatalf("through PgBouncer: %q", got)
	}
	// Known tenants again: idempotent (no error, nothing duplicated).
	if err := env.Provision(ctx, DefaultTenants()...); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, super, `select count(*) from docs where tenant_id = 't01'`); got != 2 {
		t.Fatalf("docs of t01 after re-provisioning: %d, want 2", got)
	}
}

func TestValidateTenant(t *testing.T) {
	for _, ok := range []string{"t01", "acme", "a_b-c", "x"} {
		if err := ValidateTenant(ok); err != nil {
			t.Errorf("ValidateTenant(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "T01", "a.b", `a"b`, "app", "postgres", "pg_x", "public", strings.Repeat("a", 60)} {
		if err := ValidateTenant(bad); err == nil {
			t.Errorf("ValidateTenant(%q) = nil", bad)
		}
	}
}

// TestLifecycle exercises a private Env: restarts, admin console, Close.
func TestLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	RequireBinaries(t)
	ctx := testCtx(t)
	start := time.Now()
	env, err := Start(ctx, Options{Tenants: []string{"r1", "r2"}, PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start with 2 tenants: %v", time.Since(start))
	defer env.Close()

	ping := func(url string) error {
		c, err := connectURL(ctx, url, true)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		_, err = c.Exec(ctx, "select 1")
		return err
	}
	bouncerURL := env.BouncerURL("app.r1", env.AppDatabase)
	if err := ping(bouncerURL); err != nil {
		t.Fatal(err)
	}

	rows, err := env.BouncerShow(ctx, "SHOW POOLS")
	if err != nil || len(rows) == 0 {
		t.Fatalf("SHOW POOLS: %v %v", rows, err)
	}
	for _, cmd := range []string{"PAUSE", "RESUME", "RECONNECT"} {
		if err := env.BouncerAdmin(ctx, cmd); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}

	if err := env.RestartPostgres(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ping(bouncerURL); err != nil {
		t.Fatalf("through PgBouncer after RestartPostgres: %v", err)
	}

	port := env.BouncerPort
	if err := env.StopBouncer(); err != nil {
		t.Fatal(err)
	}
	if err := ping(bouncerURL); err == nil {
		t.Fatal("PgBouncer still answers after StopBouncer")
	}
	if err := env.StartBouncer(ctx); err != nil {
		t.Fatal(err)
	}
	if env.BouncerPort != port {
		t.Fatalf("port changed %d -> %d", port, env.BouncerPort)
	}
	if err := env.RestartBouncer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ping(bouncerURL); err != nil {
		t.Fatal(err)
	}

	if err := env.KillPostgres(); err != nil {
		t.Fatal(err)
	}
	if err := env.StartPostgres(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ping(env.DirectURL("app.r2", "r2")); err != nil {
		t.Fatal(err)
	}

	pgDir, bDir := env.pg.dir, env.bouncer.dir
	pgProc, bProc := env.pg.proc, env.bouncer.proc
	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
	if err := env.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !pgProc.exited() || !bProc.exited() {
		t.Fatal("processes still running after Close")
	}
	for _, d := range []string{pgDir, bDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%s not removed: %v", d, err)
		}
	}
}

func TestStartPostgres(t *testing.T) {
	RequireBinaries(t)
	ctx := testCtx(t)
	s, err := StartPostgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Provision(ctx, "t01", "acme"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, s.URL("app.acme", "acme"), nil)
	if got := queryString(t, ctx, conn, "select current_user || '@' || current_database() || ':' || count(*) from items"); got != "app.acme@acme:3" {
		t.Fatalf("got %q", got)
	}
	if env := Shared(t); env.PGPort == s.Port {
		t.Fatal("second cluster on the shared port")
	}
	conn.Close(ctx)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkProvision40Tenants measures provisioning 40 tenants on a fresh
// cluster (the cluster start is not timed).
func BenchmarkProvision40Tenants(b *testing.B) {
	RequireBinaries(b)
	ctx := context.Background()
	tenants := make([]string, 40)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("m%02d", i)
	}
	for b.Loop() {
		b.StopTimer()
		s, err := StartPostgres(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		err = s.Provision(ctx, tenants...)
		b.StopTimer()
		s.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// CI set to anything but an explicit no turns a missing server into a
// failure.
func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{
		"": false, "0": false, "false": false, "FALSE": false, "no": false,
		"true": true, "1": true, "True": true, "yes": true, "woodpecker": true,
	} {
		t.Setenv("CI", v)
		if got := inCI(); got != want {
			t.Errorf("CI=%q: inCI() = %v, want %v", v, got, want)
		}
	}
}
