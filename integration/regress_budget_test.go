package integration

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// Regression: a connection attempt to a server that accepts and never
// answers (or a dial that never completes) went on after its caller gave up,
// on pgxpool's constructor goroutine with no deadline, and held its budget
// slot until the pool closed: one unreachable tenant could take
// pool_max_conns slots for good, and the whole budget with a small one.
func TestRegressAbandonedAttemptReturnsSlot(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	for _, kind := range []string{"blackhole", "dial-hangs"} {
		t.Run(kind, func(t *testing.T) {
			dead := newDeadTarget(t, kind)
			defer dead.close()
			// A budget of 2: one stuck attempt would leave t01 a single slot,
			// two would starve it.
			cfg, err := tenantpg.ParseConfig(routeDirect.dsn(env, "tenant_max_conns=2", "pool_max_conns=2"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Resolve = func(_ context.Context, tenant string, pc *pgxpool.Config) error {
				if tenant == "dead" {
					dead.resolve(kind, pc)
				}
				return nil
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx := context.Background()
			for range 3 {
				dctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, "dead"), 100*time.Millisecond)
				start := time.Now()
				_, err := db.ExecContext(dctx, "select 1")
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
					t.Fatalf("dead tenant: %v after %s, want the deadline", err, time.Since(start))
				}
			}
			waitUntil(t, 2*time.Second, func() bool {
				st := stats(t, db)
				return st.OpenConns == 0 && st.Reserved == 0 && dead.dialing.Load() == 0
			})
			// The whole budget is there for t01: two sessions at once.
			c1, err := db.Conn(tenantpg.WithTenant(ctx, "t01"))
			if err != nil {
				t.Fatal(err)
			}
			defer c1.Close()
			c2ctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, "t01"), 2*time.Second)
			defer cancel()
			c2, err := db.Conn(c2ctx)
			if err != nil {
				t.Fatalf("second connection of t01: %v (budget held by the dead tenant's attempts?)", err)
			}
			c2.Close()
		})
	}
}

// Regression: a second caller of a tenant that never connected waits for
// the first caller's attempt; when that attempt waited for the budget, the
// second caller got a bare context.DeadlineExceeded instead of the
// *BudgetError the first one got.
func TestRegressProbeWaiterGetsBudgetError(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 4)
	db := open(t, routeDirect.dsn(env, "tenant_max_conns=1"))
	ctx := context.Background()
	held, err := db.Conn(tenantpg.WithTenant(ctx, ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var wg sync.WaitGroup
	var typed atomic.Int64
	callers := 0
	for _, id := range ids[1:] {
		// The first caller of each cold tenant waits 400 ms; the second
		// comes later and gives up first, behind the first one's attempt.
		for i, d := range []time.Duration{400 * time.Millisecond, 150 * time.Millisecond} {
			callers++
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i == 1 {
					time.Sleep(50 * time.Millisecond)
				}
				wctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, id), d)
				defer cancel()
				_, err := db.ExecContext(wctx, "select 1")
				var be *tenantpg.BudgetError
				if errors.As(err, &be) && be.Tenant == id && errors.Is(err, context.DeadlineExceeded) {
					typed.Add(1)
					return
				}
				t.Errorf("caller %d of %s: %T %v, want a *BudgetError", i, id, err, err)
			}()
		}
	}
	wg.Wait()
	if typed.Load() != int64(callers) {
		t.Fatalf("%d of %d callers got a *BudgetError", typed.Load(), callers)
	}
	if st := stats(t, db); st.BudgetErrors != int64(callers) || st.OpenConns != 1 || st.Reserved != 0 {
		t.Fatalf("stats: %d budget errors, %d open, %d reserved", st.BudgetErrors, st.OpenConns, st.Reserved)
	}
}
