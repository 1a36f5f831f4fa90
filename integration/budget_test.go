package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// sample is one observation of the budget from both sides.
type sample struct {
	at     time.Time
	open   int   // tenantpg's physical connections
	closed int64 // connections tenantpg has closed so far
	server int   // tenant backends in pg_stat_activity
}

// watch samples tenantpg's and the server's connection counts until stop.
func watch(t *testing.T, env *pgtest.Env, db interface{ Stats() tenantpg.Stats }, stop <-chan struct{}) <-chan []sample {
	out := make(chan []sample, 1)
	go func() {
		var samples []sample
		ctx := context.Background()
		for {
			select {
			case <-stop:
				out <- samples
				return
			case <-time.After(3 * time.Millisecond):
			}
			st := db.Stats()
			n, err := env.ServerConnections(ctx, "app.")
			if err != nil {
				t.Error(err)
				continue
			}
			samples = append(samples, sample{at: time.Now(), open: st.OpenConns, closed: st.Dials - int64(st.OpenConns), server: n})
		}
	}()
	return out
}

func TestBudgetCapsPhysicalConnections(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 40)
	const budget = 8
	db := directUserDB(t, env, fmt.Sprint("tenant_max_conns=", budget))
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	samplesCh := watch(t, env, c, stop)
	// Most queries find their tenant without a connection, so this measures
	// connection churn under the budget: keep it short in make test.
	const ops = 600
	errs := hammer(t, ids, 32, ops, func(ctx context.Context, tenant string, _ int) error {
		u, err := queryString(ctx, db, "select current_user")
		if err == nil && u != "app."+tenant {
			err = fmt.Errorf("current_user %q", u)
		}
		return err
	})
	close(stop)
	samples := <-samplesCh
	st := c.Stats()
	if errs != 0 {
		for _, p := range st.Pools {
			if p.OpenConns > 0 {
				t.Logf("pool %v: open %d, acquired %d, idle %d, constructing %d", p.Tenants, p.OpenConns, p.Pool.AcquiredConns(), p.Pool.IdleConns(), p.Pool.ConstructingConns())
			}
		}
		t.Fatalf("%d of %d queries failed; open %d reserved %d waiting %d", errs, ops, st.OpenConns, st.Reserved, st.Waiting)
	}
	if st.PeakConns > budget {
		t.Fatalf("tenantpg held %d connections, budget %d", st.PeakConns, budget)
	}
	// The server may still list backends whose connection tenantpg closed
	// but that have not exited yet; nothing else may exceed the budget.
	const exitWindow = 250 * time.Millisecond
	maxServer, maxExcess := 0, 0
	for i, s := range samples {
		if s.open > budget {
			t.Fatalf("sample %d: %d open", i, s.open)
		}
		maxServer = max(maxServer, s.server)
		if s.server <= budget {
			continue
		}
		// connections closed within the window before this sample
		j := i
		for j > 0 && s.at.Sub(samples[j-1].at) < exitWindow {
			j--
		}
		recent := s.closed - samples[j].closed
		excess := s.server - budget
		maxExcess = max(maxExcess, excess)
		if int64(excess) > recent {
			t.Fatalf("sample %d: %d server backends, budget %d, only %d closes in the last %s", i, s.server, budget, recent, exitWindow)
		}
	}
	t.Logf("%d queries over %d tenants: peak %d tenantpg connections, peak %d server backends (%d samples), %d dials, %d evicted conns, %d evicted pools, %d handed off, %d budget waits",
		ops, len(ids), st.PeakConns, maxServer, len(samples), st.Dials, st.EvictedConns, st.EvictedPools, st.HandedOff, st.BudgetWaits)
	if len(samples) < 10 {
		t.Fatalf("only %d samples", len(samples))
	}
}

func TestBudgetExhaustedIsTyped(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	db := directUserDB(t, env, "tenant_max_conns=1")
	ctx := testCtx(t)
	held, err := db.Conn(tenantpg.WithTenant(ctx, "t01"))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, "t02"), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = db.ExecContext(wctx, "select 1")
	var be *tenantpg.BudgetError
	if !errors.As(err, &be) || !errors.Is(err, tenantpg.ErrBudgetExhausted) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want *BudgetError", err)
	}
	if be.Tenant != "t02" || be.Limit != 1 || time.Since(start) > 2*time.Second {
		t.Fatalf("BudgetError %+v after %s", be, time.Since(start))
	}
	held.Close()
	// The slot is free again: t02 evicts t01's idle connection.
	if u, err := queryString(tenantpg.WithTenant(ctx, "t02"), db, "select current_user"); err != nil || u != "app.t02" {
		t.Fatalf("after release: %q, %v", u, err)
	}
	st := stats(t, db)
	if st.OpenConns != 1 || st.BudgetErrors != 1 || st.EvictedConns+st.EvictedPools == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHotTenantCannotStarveOthers(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 6)
	// Per-tenant pools of 4 share a budget of 4: the hot tenant alone could
	// hold every connection.
	db := directUserDB(t, env, "tenant_max_conns=4", "pool_max_conns=4")
	ctx := testCtx(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	hot := tenantpg.WithTenant(ctx, ids[0])
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := db.ExecContext(hot, "select pg_sleep(0.002)"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	// Every other tenant gets through, each within a second.
	for _, id := range ids[1:] {
		qctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, id), time.Second)
		start := time.Now()
		u, err := queryString(qctx, db, "select current_user")
		cancel()
		if err != nil || u != "app."+id {
			t.Fatalf("tenant %s starved: %q, %v after %s", id, u, err, time.Since(start))
		}
		t.Logf("tenant %s served in %s while the hot tenant ran", id, time.Since(start).Round(time.Microsecond))
	}
	close(stop)
	wg.Wait()
	if st := stats(t, db); st.PeakConns > 4 {
		t.Fatalf("peak %d over budget 4", st.PeakConns)
	}
}

// TestEvictionRunsBeforeClose: a connection evicted for another tenant's
// budget slot is closed by tenantpg, not pgxpool, and the pool config's
// BeforeClose hook still sees it first, open, as it sees every connection
// pgxpool closes.
func TestEvictionRunsBeforeClose(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	cfg, err := tenantpg.ParseConfig(withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}", "tenant_max_conns=1"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var closed []string
	cfg.Pool.BeforeClose = func(c *pgx.Conn) {
		mu.Lock()
		defer mu.Unlock()
		closed = append(closed, fmt.Sprintf("%s open=%t", c.Config().User, !c.IsClosed()))
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := testCtx(t)
	for _, id := range []string{"t01", "t02"} { // t02's connection evicts t01's
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if st := stats(t, db); st.EvictedConns != 1 {
		t.Fatalf("%d connections evicted, want 1", st.EvictedConns)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(closed) != 1 || closed[0] != "app.t01 open=true" {
		t.Fatalf("BeforeClose saw %v, want t01's connection once, open", closed)
	}
}
