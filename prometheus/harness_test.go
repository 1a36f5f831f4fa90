package tenantpgprom

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// harnessTenants provisions n tenants t01… on env.
func harnessTenants(t *testing.T, env *pgtest.Env, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%02d", i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.Provision(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	return ids
}

// selectOne runs "select 1" once for each tenant.
func selectOne(t *testing.T, ctx context.Context, db *sql.DB, tenants ...string) {
	t.Helper()
	for _, id := range tenants {
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1"); err != nil {
			t.Fatal(err)
		}
	}
}

// openConnector opens a tenantpg *sql.DB routing by login through
// PgBouncer, with database/sql's idle pool off so that every query is one
// pool acquire.
func openConnector(t *testing.T, env *pgtest.Env, params ...string) (*sql.DB, *tenantpg.Connector) {
	t.Helper()
	dsn := env.BouncerURL(env.AppUser, env.AppDatabase) + "&tenant_user={user}.{tenant}"
	for _, p := range params {
		dsn += "&" + p
	}
	cfg, err := tenantpg.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		t.Fatal(err)
	}
	return db, c
}

// TestCollectorAgainstServers runs queries for 30 tenants through a real
// PgBouncer, tenant i running i queries, and checks the collector's output
// with TopN 5 against the connector's Stats.
func TestCollectorAgainstServers(t *testing.T) {
	start := time.Now()
	env := pgtest.Shared(t)
	t.Logf("servers ready in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	ids := harnessTenants(t, env, 30)
	t.Logf("30 tenants provisioned in %s", time.Since(start).Round(time.Millisecond))
	db, c := openConnector(t, env, "tenant_max_conns=40", "pool_max_conns=2", "tenant_pool_idle=1h")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	queries := 0
	start = time.Now()
	for i, id := range ids {
		tctx := tenantpg.WithTenant(ctx, id)
		for range i + 1 {
			var u string
			if err := db.QueryRowContext(tctx, "select current_user").Scan(&u); err != nil {
				t.Fatal(err)
			}
			if u != "app."+id {
				t.Fatalf("tenant %s: current_user %q", id, u)
			}
			queries++
		}
	}
	t.Logf("%d queries in %s", queries, time.Since(start).Round(time.Millisecond))
	// Hold a transaction of the busiest tenant open so that a connection
	// is in use during the scrape.
	tx, err := db.BeginTx(tenantpg.WithTenant(ctx, "t30"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	queries++ // the transaction's acquire

	col, err := NewDB(db, Options{TopN: 5, ConstLabels: prometheus.Labels{"db": "app"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	start = time.Now()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gathered %d families for %d tenants in %s", len(mfs), len(ids), time.Since(start))
	st := c.Stats()
	s := seriesOf(mfs)

	// Metric names: exactly the described ones.
	var names []string
	for _, d := range col.d.all() {
		names = append(names, strings.SplitN(d.String(), "\"", 3)[1]) // Desc{fqName: "..."
	}
	if len(s) != len(names) {
		t.Errorf("%d families gathered, %d described", len(s), len(names))
	}
	for _, n := range names {
		if _, ok := s[n]; !ok {
			t.Errorf("metric %s missing", n)
		}
	}

	// Labels and the cardinality bound.
	want := map[string]bool{"t26": true, "t27": true, "t28": true, "t29": true, "t30": true, OtherTenant: true}
	for name, m := range s {
		if !strings.HasPrefix(name, "tenantpg_tenant_") {
			if len(m) != 1 {
				t.Errorf("global %s has %d series", name, len(m))
			}
			for k := range m {
				if k != "db=app" {
					t.Errorf("global %s has labels %q", name, k)
				}
			}
			continue
		}
		if got := s.tenantValues(name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: tenant label values %v, want %v", name, got, want)
		}
		for k := range m {
			labels := labelNames(k)
			switch name {
			case "tenantpg_tenant_connections":
				if labels != "db,state,tenant" {
					t.Errorf("%s labels %s", name, labels)
				}
			case "tenantpg_tenant_evicted_connections_total":
				if labels != "db,reason,tenant" {
					t.Errorf("%s labels %s", name, labels)
				}
			default:
				if labels != "db,tenant" {
					t.Errorf("%s labels %s", name, labels)
				}
			}
		}
	}
	if n := testutil.CollectAndCount(col, "tenantpg_tenant_acquires_total"); n != 6 {
		t.Errorf("CollectAndCount = %d acquire series, want 6", n)
	}

	// Per-tenant figures against Stats: named tenants match their pool,
	// "__other__" holds the rest, and the sums match the totals.
	var totalAcq, totalDials, totalOpen, totalIdle, totalInUse float64
	otherAcq := 0.0
	for _, p := range st.Pools {
		totalAcq += float64(p.Checkouts)
		totalDials += float64(p.Dials)
		totalOpen += float64(p.OpenConns)
		totalIdle += float64(p.Pool.IdleConns() + int32(p.Parked))
		totalInUse += float64(p.Pool.AcquiredConns() - int32(p.Parked))
		if !want[p.Tenants[0]] {
			otherAcq += float64(p.Checkouts)
		}
	}
	acq := s.byTenant("tenantpg_tenant_acquires_total")
	if totalAcq != float64(queries) || sum(acq) != totalAcq {
		t.Errorf("acquires: %v summed, %v in Stats, %d queries", sum(acq), totalAcq, queries)
	}
	if acq[OtherTenant] != otherAcq || otherAcq != 25*26/2 {
		t.Errorf("other acquires %v, want %v (t01..t25)", acq[OtherTenant], otherAcq)
	}
	for i := 26; i <= 30; i++ {
		id := fmt.Sprintf("t%02d", i)
		p, _ := st.Tenant(id)
		if got := acq[id]; got != float64(p.Checkouts) || p.Checkouts < int64(i) {
			t.Errorf("%s acquires %v, Stats %d, want at least %d", id, got, p.Checkouts, i)
		}
	}
	if got := sum(s.byTenant("tenantpg_tenant_dials_total")); got != totalDials || got != float64(st.Dials) {
		t.Errorf("dials: %v summed, %v in pools, %d in Stats", got, totalDials, st.Dials)
	}
	if got := sum(s.byTenant("tenantpg_tenant_open_connections")); got != totalOpen || got != float64(st.OpenConns) {
		t.Errorf("open: %v summed, %v in pools, %d in Stats", got, totalOpen, st.OpenConns)
	}
	conns := s["tenantpg_tenant_connections"]
	var idle, inUse float64
	for k, v := range conns {
		switch {
		case strings.Contains(k, "state=idle"):
			idle += v
		case strings.Contains(k, "state=in_use"):
			inUse += v
		}
	}
	if idle != totalIdle || inUse != totalInUse || inUse != 1 || conns["db=app|state=in_use|tenant=t30"] != 1 {
		t.Errorf("connections idle %v (Stats %v), in use %v (Stats %v): %v", idle, totalIdle, inUse, totalInUse, conns)
	}
	if got := s.byTenant("tenantpg_tenant_pools"); got[OtherTenant] != 25 || sum(got) != float64(len(st.Pools)) {
		t.Errorf("pools %v, Stats has %d", got, len(st.Pools))
	}
	if got := s.byTenant("tenantpg_tenant_max_connections"); got["t30"] != 2 || got[OtherTenant] != 50 {
		t.Errorf("max connections %v", got)
	}

	// Budget figures equal Stats.
	for name, want := range map[string]float64{
		"tenantpg_budget_max_connections":              float64(st.MaxConns),
		"tenantpg_budget_open_connections":             float64(st.OpenConns),
		"tenantpg_budget_peak_connections":             float64(st.PeakConns),
		"tenantpg_budget_reserved_connections":         float64(st.Reserved),
		"tenantpg_budget_waiters":                      float64(st.Waiting),
		"tenantpg_budget_dials_total":                  float64(st.Dials),
		"tenantpg_budget_waits_total":                  float64(st.BudgetWaits),
		"tenantpg_budget_wait_seconds_total":           st.BudgetWait.Seconds(),
		"tenantpg_budget_errors_total":                 float64(st.BudgetErrors),
		"tenantpg_budget_evicted_connections_total":    float64(st.EvictedConns),
		"tenantpg_budget_evicted_pools_total":          float64(st.EvictedPools),
		"tenantpg_budget_handed_off_connections_total": float64(st.HandedOff),
		"tenantpg_pools":                               float64(len(st.Pools)),
		"tenantpg_tenants":                             30,
		"tenantpg_pools_created_total":                 float64(st.PoolsCreated),
		"tenantpg_pools_reaped_total":                  float64(st.PoolsReaped),
		"tenantpg_tenants_forgotten_total":             float64(st.Forgotten),
		"tenantpg_rejected_tenants":                    float64(st.Rejected),
		"tenantpg_no_tenant_checkouts_total":           float64(st.NoTenant),
	} {
		if got := s[name]["db=app"]; got != want {
			t.Errorf("%s = %v, Stats says %v", name, got, want)
		}
	}
	if st.MaxConns != 40 || st.OpenConns < 30 || st.PoolsCreated != 30 {
		t.Errorf("unexpected Stats %+v", st)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestCollectorAcrossReaping lets tenant pools be reaped and recreated
// between scrapes and checks that no counter series goes down.
func TestCollectorAcrossReaping(t *testing.T) {
	env := pgtest.Shared(t)
	ids := harnessTenants(t, env, 4)
	db, c := openConnector(t, env, "tenant_pool_idle=2s", "tenant_max_conns=8", "pool_max_conns=2")
	col, err := New(c, Options{TopN: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(id string, n int) {
		t.Helper()
		for range n {
			if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var prev series
	total := 0.0
	scrape := func(step string) series {
		t.Helper()
		s := gather(t, col)
		for name, m := range s {
			if !strings.HasSuffix(name, "_total") {
				continue
			}
			for k, v := range m {
				if old, ok := prev[name][k]; ok && v < old {
					t.Fatalf("%s: %s{%s} went down from %v to %v", step, name, k, old, v)
				}
			}
		}
		if n := len(s.tenantValues("tenantpg_tenant_acquires_total")); n > 3 {
			t.Fatalf("%s: %d tenant label values with TopN 2", step, n)
		}
		prev = s
		return s
	}
	reaped := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for c.Stats().PoolsReaped < n {
			if time.Now().After(deadline) {
				t.Fatalf("pools not reaped: %+v", c.Stats())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	run(ids[0], 20)
	run(ids[1], 10)
	run(ids[2], 5)
	total += 35
	s := scrape("first")
	if s["tenantpg_tenant_acquires_total"]["tenant="+ids[0]] != 20 {
		t.Fatalf("first: %v", s["tenantpg_tenant_acquires_total"])
	}
	// All pools are reaped; then t01 comes back with a new pool whose
	// pgxpool counters start at 0.
	reaped(3)
	run(ids[3], 40)
	run(ids[0], 3)
	total += 43
	s = scrape("after reaping")
	acq := s["tenantpg_tenant_acquires_total"]
	if acq["tenant="+ids[0]] != 23 || acq["tenant="+ids[3]] != 40 {
		t.Fatalf("after reaping: %v", acq)
	}
	if st := c.Stats(); st.PoolsCreated != 5 || st.PoolsReaped != 3 {
		t.Fatalf("Stats after reaping: created %d, reaped %d", st.PoolsCreated, st.PoolsReaped)
	}
	col.mu.Lock()
	got := col.others[cAcquires]
	for _, ts := range col.tenants {
		got += ts.totals[cAcquires]
	}
	col.mu.Unlock()
	if got != total {
		t.Fatalf("running totals %v, want %v", got, total)
	}
}

// TestCollectorCountsForgets: a Forget that unmaps a tenant counts once in
// tenantpg_tenants_forgotten_total and its pool once in
// tenantpg_pools_reaped_total; Forgets of a tenant already forgotten, or
// never seen, count nothing.
func TestCollectorCountsForgets(t *testing.T) {
	env := pgtest.Shared(t)
	ids := harnessTenants(t, env, 2)
	db, c := openConnector(t, env)
	col, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	selectOne(t, ctx, db, ids...)
	for _, id := range []string{ids[0], ids[0], "never_seen"} {
		if err := c.Forget(ctx, id); err != nil {
			t.Fatalf("Forget(%s): %v", id, err)
		}
	}
	s := gather(t, col)
	for name, want := range map[string]float64{
		"tenantpg_tenants_forgotten_total": 1,
		"tenantpg_pools_reaped_total":      1,
		"tenantpg_pools":                   1,
		"tenantpg_tenants":                 1,
	} {
		if got := s[name][""]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
