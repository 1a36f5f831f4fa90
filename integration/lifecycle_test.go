package integration

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
	"go.uber.org/goleak"
)

func TestIdlePoolsAreReaped(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 5)
	db := directUserDB(t, env, "tenant_pool_idle=1s")
	ctx := testCtx(t)
	// Keep one tenant busy from the start: its pool must survive.
	busy := func() {
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, ids[0]), "select 1"); err != nil {
			t.Error(err)
		}
	}
	busy()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				busy()
			}
		}
	}()
	for _, id := range ids[1:] {
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if st := stats(t, db); st.PoolsCreated != int64(len(ids)) || st.Dials < int64(len(ids)) {
		t.Fatalf("%d pools created, %d dials after use", st.PoolsCreated, st.Dials)
	}
	waitUntil(t, 10*time.Second, func() bool { return len(stats(t, db).Pools) == 1 })
	close(stop)
	<-done
	st := stats(t, db)
	if st.Pools[0].Tenants[0] != ids[0] || st.PoolsReaped != int64(len(ids)-1) {
		t.Fatalf("left %v, reaped %d", st.Pools[0].Tenants, st.PoolsReaped)
	}
	// Reaped pools close on their own goroutines, and a closed connection
	// leaves the count once the server has closed its end: give them a
	// moment rather than reading the count as the last pool leaves the map.
	waitUntil(t, 2*time.Second, func() bool { return stats(t, db).OpenConns <= 1 })
	// A reaped tenant comes back on demand.
	if u, err := queryString(tenantpg.WithTenant(ctx, ids[3]), db, "select current_user"); err != nil || u != "app."+ids[3] {
		t.Fatalf("after reaping: %q, %v", u, err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 5)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, mode := range []string{"sql.Open", "OpenDB"} {
		var db *sql.DB
		dsn := withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}", "tenant_max_conns=6")
		if mode == "OpenDB" {
			cfg, err := tenantpg.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			if db, err = tenantpg.OpenDB(cfg); err != nil {
				t.Fatal(err)
			}
		} else {
			var err error
			if db, err = sql.Open("tenantpg", dsn); err != nil {
				t.Fatal(err)
			}
		}
		ctx := context.Background()
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 20; j++ {
					if _, err := db.ExecContext(tenantpg.WithTenant(ctx, ids[(i+j)%len(ids)]), "select 1"); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		c, _ := tenantpg.ConnectorOf(db)
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		st := c.Stats()
		if st.OpenConns != 0 || len(st.Pools) != 0 {
			t.Fatalf("%s: after Close %d connections, %d pools", mode, st.OpenConns, len(st.Pools))
		}
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, ids[0]), "select 1"); err == nil {
			t.Fatalf("%s: query after Close succeeded", mode)
		}
		if _, err := c.Connect(tenantpg.WithTenant(ctx, ids[0])); err != tenantpg.ErrClosed {
			t.Fatalf("%s: Connect after Close = %v, want ErrClosed", mode, err)
		}
	}
}

// TestCloseUnderContention closes the *sql.DB while 8 workers share a
// two-connection pool, so that checkouts are queued for connections when
// the pool closes: they must fail with tenantpg.ErrClosed (or database/sql's
// "database is closed"), not pgxpool's untyped "closed pool", the
// connections must all be given back, and nothing may panic (a checkout
// woken by the closing pool could once acquire more connections than the
// pool has slots).
func TestCloseUnderContention(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	ctx := tenantpg.WithTenant(context.Background(), ids[0])
	for round := range 20 {
		db := directUserDB(t, env, "pool_max_conns=2")
		db.SetMaxIdleConns(16)
		c, _ := tenantpg.ConnectorOf(db)
		var wg sync.WaitGroup
		var ok atomic.Int64
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := db.ExecContext(ctx, "select pg_sleep(0.001)")
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, tenantpg.ErrClosed) || strings.Contains(err.Error(), "database is closed"):
						return
					default:
						t.Errorf("round %d: %v", round, err)
						return
					}
				}
			}()
		}
		waitUntil(t, 5*time.Second, func() bool { return ok.Load() >= 20 })
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if st := c.Stats(); st.OpenConns != 0 || len(st.Pools) != 0 {
			t.Fatalf("round %d: after Close %d connections, %d pools", round, st.OpenConns, len(st.Pools))
		}
	}
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
