package integration

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestFailedPingKeepsOneHolder: a Ping that fails while the connection
// stays open (its context ended before anything was sent) must leave the
// connection with tenantpg alone. pgx stdlib's Ping closes its wrapper on
// any failure, which for a pool connection releases it to pgxpool; tenantpg
// then parked it too, and the next two checkouts of the tenant shared one
// server session. Through a bound *sql.Conn and through tenant_ping's pool
// (an unbound one): with 3 connections parked, one of which pinged, 4
// *sql.Conn held at once (3 from the parked ones, 1 from pgxpool) must have
// 4 backends.
func TestFailedPingKeepsOneHolder(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	ctx := testCtx(t)
	tctx := tenantpg.WithTenant(ctx, "t01")
	ended := func(ctx context.Context) context.Context {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return ctx
	}

	distinctBackends := func(db *sql.DB, step string, n int) {
		t.Helper()
		conns := make([]*sql.Conn, n)
		for i := range conns {
			c, err := db.Conn(tctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns[i] = c
		}
		seen := map[int]int{}
		for i, c := range conns {
			var pid int
			if err := c.QueryRowContext(tctx, "select pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			if j, ok := seen[pid]; ok {
				t.Fatalf("%s: checkouts %d and %d, held at once, share backend %d", step, j, i, pid)
			}
			seen[pid] = i
		}
	}

	for _, step := range []struct {
		name   string
		tenant context.Context // of the *sql.Conn that pings
	}{
		{"bound *sql.Conn", tctx},
		{"unbound *sql.Conn, tenant_ping", ctx},
	} {
		db := directUserDB(t, env, "tenant_ping=t01", "pool_max_conns=8")
		distinctBackends(db, step.name+", before", 3) // 3 parked connections
		c, err := db.Conn(step.tenant)
		if err != nil {
			t.Fatal(err)
		}
		// The connection is fine: the error is the context's, not
		// driver.ErrBadConn.
		if err := c.PingContext(ended(step.tenant)); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: Ping with an ended context: %v", step.name, err)
		}
		c.Close()
		distinctBackends(db, step.name+", after the failed Ping", 4)
	}
}
