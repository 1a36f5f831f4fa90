package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// superConn is a superuser connection to database postgres, closed after
// the test.
func superConn(t *testing.T, env *pgtest.Env) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backends counts the server's client backends whose column col (datname
// or application_name) is v.
func backends(t *testing.T, super *pgx.Conn, col, v string) int {
	t.Helper()
	var n int
	q := fmt.Sprintf("select count(*) from pg_stat_activity where backend_type = 'client backend' and %s = $1", pgx.Identifier{col}.Sanitize())
	if err := super.QueryRow(context.Background(), q, v).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func connectorOf(t *testing.T, db *sql.DB) *tenantpg.Connector {
	t.Helper()
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestForgetLetsTheTenantsDatabaseBeDropped is the offboarding case: a
// tenant with a database of its own is done, and its database must go.
// tenantpg keeps the tenant's connections for reuse, so DROP DATABASE fails
// until Forget closes them; afterwards the tenant's next request dials again
// (and is rejected, the database being gone), and Forget also drops that
// rejection from the negative cache.
func TestForgetLetsTheTenantsDatabaseBeDropped(t *testing.T) {
	env := pgtest.Shared(t)
	ctx := testCtx(t)
	super := superConn(t, env)
	tenant := fmt.Sprintf("gone%d", time.Now().UnixNano()%1_000_000)
	create := func() {
		t.Helper()
		if _, err := super.Exec(ctx, "create database "+pgx.Identifier{tenant}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	drop := func() error {
		_, err := super.Exec(ctx, "drop database "+pgx.Identifier{tenant}.Sanitize())
		return err
	}
	create()
	t.Cleanup(func() {
		_, _ = super.Exec(context.Background(), "drop database if exists "+pgx.Identifier{tenant}.Sanitize()+" with (force)")
	})

	db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}", "pool_max_conns=4"))
	db.SetMaxIdleConns(4)
	c := connectorOf(t, db)
	tctx := tenantpg.WithTenant(ctx, tenant)
	var wg sync.WaitGroup
	for range 4 { // several connections at once
		wg.Go(func() {
			if _, err := db.ExecContext(tctx, "select pg_sleep(0.05)"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// Kept for reuse: DROP DATABASE would wait 5 s for them and fail.
	if n := backends(t, super, "datname", tenant); n == 0 {
		t.Fatal("no connection to the tenant's database after its queries")
	}
	reaped := stats(t, db).PoolsReaped

	if err := c.Forget(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	st := stats(t, db)
	if _, ok := st.Tenant(tenant); ok || len(st.Pools) != 0 || st.OpenConns != 0 || st.PoolsReaped != reaped+1 {
		t.Fatalf("after Forget: tenant listed %v, %d pools, %d connections, %d pools reaped (was %d)",
			ok, len(st.Pools), st.OpenConns, st.PoolsReaped, reaped)
	}
	// Closed on the client; the server ends the backends right after.
	waitUntil(t, 5*time.Second, func() bool { return backends(t, super, "datname", tenant) == 0 })
	if err := drop(); err != nil {
		t.Fatalf("drop after Forget: %v", err)
	}

	// The next request resolves and dials again: the database is gone.
	var re *tenantpg.RejectedError
	if _, err := db.ExecContext(tctx, "select 1"); !errors.As(err, &re) || re.Cached {
		t.Fatalf("after the drop: %v, want a new *RejectedError", err)
	}
	create()
	if _, err := db.ExecContext(tctx, "select 1"); !errors.As(err, &re) || !re.Cached {
		t.Fatalf("recreated, before Forget: %v, want the cached *RejectedError", err)
	}
	if err := c.Forget(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(tctx, "select 1"); err != nil {
		t.Fatalf("recreated, after Forget: %v", err)
	}

	// Nothing to forget, a bad id, a closed connector.
	if err := c.Forget(ctx, "never-seen"); err != nil {
		t.Errorf("Forget of a tenant without a pool: %v", err)
	}
	mustErrIs(t, c.Forget(ctx, "no/slash"), tenantpg.ErrInvalidTenant)
	db.Close()
	mustErrIs(t, c.Forget(ctx, tenant), tenantpg.ErrClosed)
}

// switchable routes every tenant to the pgtest server as app.<tenant>, with
// the generation of its answer as application_name: incrementing gen is
// what a change of server or credentials behind Resolve looks like to
// tenantpg (another target), and application_name shows which one a
// connection was made for.
type switchable struct {
	base *pgxpool.Config
	gen  atomic.Int64
}

func (s *switchable) resolve(_ context.Context, tenant string, pc *pgxpool.Config) error {
	pc.ConnConfig.User = "app." + tenant
	pc.ConnConfig.RuntimeParams["application_name"] = s.app(tenant, s.gen.Load())
	return nil
}

func (s *switchable) app(tenant string, gen int64) string {
	return fmt.Sprintf("fg-%s-%d", tenant, gen)
}

func openSwitchable(t *testing.T, env *pgtest.Env, maxConns int) (*sql.DB, *switchable) {
	t.Helper()
	base, err := pgxpool.ParseConfig(env.DirectURL(env.AppUser, env.AppDatabase) + "&pool_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	s := &switchable{base: base}
	db, err := tenantpg.OpenDB(&tenantpg.Config{Pool: base, Resolve: s.resolve, MaxConns: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, s
}

// TestForgetReresolvesAndWaitsForCheckouts: a tenant keeps its pool, and so
// the answer Resolve gave when the pool was made, until Forget; then its
// next request resolves again. A transaction open at that moment keeps its
// connection and works on; Forget waits for it, and the old pool closes when
// it ends. A Forget whose context ends first returns the context's error,
// and the pool closes all the same once it is no longer used.
func TestForgetReresolvesAndWaitsForCheckouts(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	ctx := testCtx(t)
	super := superConn(t, env)
	db, s := openSwitchable(t, env, 0)
	c := connectorOf(t, db)
	tctx := tenantpg.WithTenant(ctx, ids[0])
	app := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) string {
		t.Helper()
		v, err := queryString(tctx, q, "select current_setting('application_name')")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	gen0, gen1, gen2 := s.app(ids[0], 0), s.app(ids[0], 1), s.app(ids[0], 2)
	if got := app(db); got != gen0 {
		t.Fatalf("first query: %s, want %s", got, gen0)
	}
	tx, err := db.BeginTx(tctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if got := app(tx); got != gen0 {
		t.Fatalf("transaction: %s", got)
	}
	s.gen.Add(1) // Resolve now answers differently
	if got := app(db); got != gen0 {
		t.Fatalf("a changed answer was used before Forget: %s", got)
	}

	done := make(chan error, 1)
	go func() { done <- c.Forget(ctx, ids[0]) }()
	select {
	case err := <-done:
		t.Fatalf("Forget returned %v while a transaction held a connection of the pool", err)
	case <-time.After(200 * time.Millisecond):
	}
	if got := app(db); got != gen1 {
		t.Fatalf("while Forget waits: %s, want %s", got, gen1)
	}
	if got := app(tx); got != gen0 {
		t.Fatalf("the open transaction while Forget waits: %s, want %s", got, gen0)
	}
	if n := backends(t, super, "application_name", gen0); n == 0 {
		t.Fatal("the old pool's connections closed under an open transaction")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Forget still waiting 5s after the transaction ended")
	}
	waitUntil(t, 5*time.Second, func() bool { return backends(t, super, "application_name", gen0) == 0 })

	// Give up waiting: the pool (gen1 now) closes when its transaction ends.
	tx, err = db.BeginTx(tctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if got := app(tx); got != gen1 {
		t.Fatalf("second transaction: %s, want %s", got, gen1)
	}
	s.gen.Add(1)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err = c.Forget(short, ids[0])
	cancel()
	mustErrIs(t, err, context.DeadlineExceeded)
	if got := app(db); got != gen2 {
		t.Fatalf("after the Forget that gave up: %s, want %s", got, gen2)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() bool { return backends(t, super, "application_name", gen1) == 0 })
	st := stats(t, db)
	if p, ok := st.Tenant(ids[0]); !ok || len(st.Pools) != 1 || p.OpenConns == 0 {
		t.Fatalf("pools left: %+v", st.Pools)
	}
}

// TestForgetUnderLoad forgets random tenants, each time with a new answer
// from Resolve, 10-40 ms after the last Forget returned, while 16 workers
// query random tenants under a budget: every query must succeed and see its
// own tenant, tenantpg never holds
// more connections than the budget, and when the load stops the old pools
// close, leaving one pool per tenant.
func TestForgetUnderLoad(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 6)
	super := superConn(t, env)
	const budget = 16 // the tenants' 12 connections and room for pools being retired
	db, s := openSwitchable(t, env, budget)
	c := connectorOf(t, db)
	stop := make(chan struct{})
	var forgets, gaveUp atomic.Int64
	var bg sync.WaitGroup
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+rand.IntN(30)) * time.Millisecond):
			}
			s.gen.Add(1)
			// A pool in use closes at the reaper's next tick once unused
			// (ticks are at most 500 ms apart).
			ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
			err := c.Forget(ctx, ids[rand.IntN(len(ids))])
			cancel()
			switch {
			case err == nil:
				forgets.Add(1)
			case errors.Is(err, context.DeadlineExceeded):
				gaveUp.Add(1) // in use all that time: closed later
			default:
				t.Errorf("Forget: %v", err)
			}
		}
	})
	peak := 0
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			var n int
			if err := super.QueryRow(context.Background(),
				"select count(*) from pg_stat_activity where backend_type = 'client backend' and application_name like 'fg-%'").Scan(&n); err == nil {
				peak = max(peak, n)
			}
		}
	})
	start := time.Now()
	errs := hammer(t, ids, 16, 12000, func(ctx context.Context, tenant string, i int) error {
		var user string
		var n int
		if err := db.QueryRowContext(ctx, "select current_user, $1::int", i).Scan(&user, &n); err != nil {
			return err
		}
		if user != "app."+tenant || n != i {
			return fmt.Errorf("got %s, %d", user, n)
		}
		return nil
	})
	close(stop)
	bg.Wait()
	// The budget holds client-side (Stats, below). The server's count is
	// logged only: a backend outlives its client's close by a moment.
	t.Logf("%d forgets done, %d gave up waiting; peak %d server connections; %.0f queries/s",
		forgets.Load(), gaveUp.Load(), peak, 12000/time.Since(start).Seconds())
	if errs != 0 {
		t.Fatalf("%d queries failed", errs)
	}
	if forgets.Load() == 0 {
		t.Fatal("no Forget completed under load")
	}
	// The pools forgotten while in use close once unused: the reaper
	// closes pools that serve no tenant.
	waitUntil(t, 10*time.Second, func() bool {
		for _, p := range stats(t, db).Pools {
			if len(p.Tenants) != 1 {
				return false
			}
		}
		return true
	})
	if st := stats(t, db); st.OpenConns > budget || st.PeakConns > budget {
		t.Fatalf("%d connections open, peak %d, budget %d", st.OpenConns, st.PeakConns, budget)
	}
}

// TestForgetThroughPgBouncerThenKill: through PgBouncer, Forget closes
// tenantpg's connections to PgBouncer, but PgBouncer keeps its own server
// connections to the tenant's database, so DROP DATABASE still fails until
// the admin console's KILL closes them (docs/troubleshooting.md).
func TestForgetThroughPgBouncerThenKill(t *testing.T) {
	env := pgtest.Shared(t)
	ctx := testCtx(t)
	super := superConn(t, env)
	tenant := fmt.Sprintf("gonebc%d", time.Now().UnixNano()%1_000_000)
	name := pgx.Identifier{tenant}.Sanitize()
	if _, err := super.Exec(ctx, "create database "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.BouncerAdmin(context.Background(), "RESUME "+tenant)
		_, _ = super.Exec(context.Background(), "drop database if exists "+name+" with (force)")
	})
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"))
	if _, err := db.ExecContext(tenantpg.WithTenant(ctx, tenant), "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := connectorOf(t, db).Forget(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, db); st.OpenConns != 0 {
		t.Fatalf("%d tenantpg connections after Forget", st.OpenConns)
	}
	if n := backends(t, super, "datname", tenant); n == 0 {
		t.Fatal("PgBouncer kept no server connection: this test no longer shows why KILL is needed")
	}
	if err := env.BouncerAdmin(ctx, "KILL "+tenant); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() bool { return backends(t, super, "datname", tenant) == 0 })
	if _, err := super.Exec(ctx, "drop database "+name); err != nil {
		t.Fatalf("drop after Forget and KILL: %v", err)
	}
}
