package tenantpgtest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, for a *sql.DB that does not route
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
	"github.com/tenantpg/tenantpg/tenantpgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var ids = []string{"t01", "t02", "t03", "t04", "t05", "t06"}

func setup(t *testing.T) *pgtest.Env {
	t.Helper()
	env := pgtest.Shared(t)
	if err := env.Provision(context.Background(), ids...); err != nil {
		t.Fatal(err)
	}
	return env
}

func withParams(url string, params ...string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + strings.Join(params, "&")
}

func openDB(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Correctly routed *sql.DBs pass, whatever the route and probe, with
// database/sql's idle pool on (sql.Open keeps 2 idle connections).
func TestAssertIsolationPasses(t *testing.T) {
	env := setup(t)
	for _, tc := range []struct {
		name string
		dsn  string
		cfg  tenantpgtest.Config
	}{
		{
			name: "pgbouncer login per tenant",
			dsn:  withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"),
			cfg: tenantpgtest.Config{
				Probe: "select current_user",
				Want:  func(t string) string { return "app." + t },
			},
		},
		{
			name: "pgbouncer alias, identities learned",
			dsn:  withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}", "tenant_max_conns=4"),
			cfg:  tenantpgtest.Config{Probe: "select current_database()"},
		},
		{
			name: "direct schema and RLS setting",
			dsn:  withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_schema={tenant}", "tenant_setting=app.tenant_id"),
			cfg: tenantpgtest.Config{
				// Whose rows the session sees: the RLS table and the
				// schema's table.
				Probe: "select (select string_agg(distinct tenant_id, ',') from public.docs) || '/' || (select string_agg(distinct tenant, ',') from items)",
				Want:  func(t string) string { return t + "/" + t },
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openDB(t, "tenantpg", tc.dsn)
			rep := tenantpgtest.AssertIsolation(t, db, ids, tc.cfg)
			t.Log(rep)
			paths := tc.cfg.Paths
			if paths == nil {
				paths = tenantpgtest.DefaultPaths
			}
			// Every tenant went through every path three times; the
			// tenant-less path runs once.
			if want := (len(paths)-1)*3*len(ids) + 1; rep.Ops != want || len(rep.ByPath) != len(paths) {
				t.Fatalf("%d operations over %d paths, want %d over %d", rep.Ops, len(rep.ByPath), want, len(paths))
			}
			if !rep.OK() || len(rep.Identities) != len(ids) {
				t.Fatalf("report %s, identities %v", rep, rep.Identities)
			}
		})
	}
}

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
	fatal  string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatal = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// assertVia runs AssertIsolation against a recorder on its own goroutine
// (a Fatalf ends it) and returns the recorder and the report.
func assertVia(db *sql.DB, tenants []string, cfg tenantpgtest.Config, t *testing.T) (*recorder, *tenantpgtest.Report) {
	r := &recorder{TB: t}
	var rep *tenantpgtest.Report
	done := make(chan struct{})
	go func() {
		defer close(done)
		rep = tenantpgtest.AssertIsolation(r, db, tenants, cfg)
	}()
	<-done
	return r, rep
}

// A *sql.DB that does not route at all: every tenant sees the same login,
// and a context without tenant runs queries.
func TestAssertIsolationCatchesNoRouting(t *testing.T) {
	env := setup(t)
	db := openDB(t, "pgx", env.DirectURL(env.AppUser, env.AppDatabase))
	// With expected identities: every probe is wrong.
	r, rep := assertVia(db, ids, tenantpgtest.Config{Probe: "select current_user", Want: func(t string) string { return "app." + t }}, t)
	// Every operation but the tenant-less one saw a wrong session, some
	// several times (tx and conn probe more than once).
	if rep == nil || len(rep.Mismatches) < rep.Ops-1 || len(r.errors) == 0 {
		t.Fatalf("report %v, %d errors reported", rep, len(r.errors))
	}
	if !strings.Contains(strings.Join(r.errors, "\n"), "ISOLATION BROKEN") {
		t.Fatalf("failures do not say what broke: %v", r.errors[:1])
	}
	found := false
	for _, e := range rep.Errors {
		found = found || strings.Contains(e.Error(), "tenantpg.ErrNoTenant")
	}
	if !found {
		t.Fatalf("a tenant-less query that succeeded was not reported: %v", rep.Errors)
	}
	// Learning identities: all tenants share one.
	rep, err := tenantpgtest.Check(context.Background(), db, ids, tenantpgtest.Config{Probe: "select current_user", Paths: []tenantpgtest.Path{tenantpgtest.PathQuery}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Mismatches) != len(ids)-1 || rep.Mismatches[0].Owner != "t01" {
		t.Fatalf("shared identity: %v", rep.Mismatches)
	}
}

// tenantpg misconfigured to send one tenant to another's login, with the
// identity check off: the check names the victim and the owner.
func TestAssertIsolationCatchesMisrouting(t *testing.T) {
	env := setup(t)
	cfg, err := tenantpg.ParseConfig(withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}", "tenant_verify=off"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolve = func(_ context.Context, tenant string, pc *pgxpool.Config) error {
		if tenant == "t04" {
			pc.ConnConfig.User = "app.t02" // the bug
		}
		return nil
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rep, err := tenantpgtest.Check(context.Background(), db, ids, tenantpgtest.Config{
		Probe: "select current_user", Want: func(t string) string { return "app." + t }, Rounds: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) != 0 || len(rep.Mismatches) == 0 {
		t.Fatalf("report %s: %v", rep, rep.Errors)
	}
	paths := map[tenantpgtest.Path]bool{}
	for _, m := range rep.Mismatches {
		if m.Tenant != "t04" || m.Got != "app.t02" || m.Owner != "t02" {
			t.Fatalf("mismatch %s", m)
		}
		paths[m.Path] = true
	}
	// Every path that ran for t04 saw it.
	if len(paths) != 6 {
		t.Fatalf("mismatches seen on %v only", paths)
	}
	t.Log(rep.Mismatches[0])
}

func TestCheckRefusesBadConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		tenants []string
		cfg     tenantpgtest.Config
	}{
		"no probe":        {ids, tenantpgtest.Config{}},
		"one tenant":      {ids[:1], tenantpgtest.Config{Probe: "select 1"}},
		"duplicate":       {[]string{"a", "a"}, tenantpgtest.Config{Probe: "select 1"}},
		"unknown path":    {ids, tenantpgtest.Config{Probe: "select 1", Paths: []tenantpgtest.Path{"nope"}}},
		"no paths":        {ids, tenantpgtest.Config{Probe: "select 1", Paths: []tenantpgtest.Path{}}},
		"no tenant paths": {ids, tenantpgtest.Config{Probe: "select 1", Paths: []tenantpgtest.Path{tenantpgtest.PathNoTenant}}},
	} {
		if _, err := tenantpgtest.Check(context.Background(), nil, tc.tenants, tc.cfg); !errors.Is(err, tenantpgtest.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	r, rep := assertVia(nil, ids, tenantpgtest.Config{}, t)
	if r.fatal == "" || rep != nil {
		t.Fatalf("AssertIsolation with an empty Config: fatal %q", r.fatal)
	}
}
