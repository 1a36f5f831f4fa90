package integration

import (
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestLifetimeAppliesToBusyConnections: pgxpool applies
// pool_max_conn_lifetime when a connection is released to it, and tenantpg
// parks a busy connection for the tenant's next checkout instead, so a
// connection in constant use went on past its lifetime for as long as the
// traffic lasted. tenantpg gives a connection back after the pool's
// lifetime (or 10 s) from its acquisition: one worker querying without
// pause for 1.5 s with a lifetime of 250 ms sees several backends.
func TestLifetimeAppliesToBusyConnections(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, "pool_max_conns=1", "pool_max_conn_lifetime=250ms", "pool_max_conn_lifetime_jitter=0s")
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	pids := map[int]bool{}
	queries := 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); queries++ {
		var pid int
		if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids[pid] = true
	}
	if len(pids) < 3 {
		t.Fatalf("%d queries in 1.5 s used %d backend(s) with a lifetime of 250 ms, want at least 3", queries, len(pids))
	}
	if st := stats(t, db); st.Dials != int64(len(pids)) || st.PeakConns != 1 {
		t.Fatalf("%d backends, but %d dials and a peak of %d connections", len(pids), st.Dials, st.PeakConns)
	}
}
