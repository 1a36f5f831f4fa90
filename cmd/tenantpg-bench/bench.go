package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/benchops"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

type bench struct {
	env *pgtest.Env
	o   options

	mu        sync.Mutex
	super     *pgx.Conn // counts server connections
	chartData *chart
}

func newBench(ctx context.Context, env *pgtest.Env, o options) (*bench, error) {
	super, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, "postgres"))
	if err != nil {
		return nil, err
	}
	return &bench{env: env, o: o, super: super}, nil
}

func (b *bench) close() { b.super.Close(context.Background()) }

// serverConns counts the backends whose application_name is app ("" for
// all backends of the app roles).
func (b *bench) serverConns(ctx context.Context, app string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int
	err := b.super.QueryRow(ctx, `select count(*) from pg_stat_activity
		where backend_type = 'client backend' and usename like 'app%' and ($1 = '' or application_name = $1)`, app).Scan(&n)
	return n, err
}

// waitServerConns waits until the app backends are gone, so that one
// contender's leftovers do not count against the next.
func (b *bench) waitServerConns(ctx context.Context, atMost int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if n, err := b.serverConns(ctx, ""); err == nil && n <= atMost {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustOpenDB(dsn string) *sql.DB {
	cfg, err := tenantpg.ParseConfig(dsn)
	if err != nil {
		panic(err)
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		panic(err)
	}
	return db
}

// freshNote says why single closes every contender's connections before
// each round.
const freshNote = "Before each round's warm-up every contender's server connections are closed, so that it dials new ones: " +
	"which server backend, and so which core, a connection gets moves a contender's throughput by a few percent " +
	"(two identical tenantpg contenders differed by up to 5% in one run when connections were kept for the whole run), " +
	"and this draws it again every round instead of once per run."

// resetTenantpg closes the connections tenantpg holds for tenant: they go
// back to the tenant's pgxpool (Connector.Pool), which closes them.
func resetTenantpg(ctx context.Context, db *sql.DB, tenant string) {
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		panic(err)
	}
	p, err := c.Pool(ctx, tenant)
	if err != nil {
		panic(err)
	}
	p.Reset()
}

// oneTenantRoute is a way to the server for one tenant and the exec mode
// every contender uses on it (sections 1 and 7).
type oneTenantRoute struct{ name, url, mode string }

func (b *bench) oneTenantRoutes() []oneTenantRoute {
	env := b.env
	return []oneTenantRoute{
		{"direct", env.DirectURL(env.AppUser, env.AppDatabase), "cache_statement"},
		{"PgBouncer", env.BouncerURL(env.AppUser, env.AppDatabase), "exec"},
	}
}

// single: one tenant, the same exec mode and pool size for every contender.
func (b *bench) single(ctx context.Context, r *report) error {
	r.section("1. One tenant: tenantpg against database/sql and pgx pools",
		"`QueryRow(\"select $1::int\")`, tenant t01 (login app.t01), pool size 8 for every contender, same exec mode per route. "+
			"`tenantpg` is `OpenDB` (database/sql keeps up to 1,024 idle handles); `tenantpg (sql.Open)` is `sql.Open(\"tenantpg\", dsn)` "+
			"with database/sql's default of 2 idle handles, so at 8 workers most checkouts make a new handle. "+
			"Ratios are against `stdlib.OpenDB`. "+freshNote)
	for _, rt := range b.oneTenantRoutes() {
		base := withParams(rt.url, "default_query_exec_mode="+rt.mode, "pool_max_conns=8")
		for _, workers := range []int{1, 8} {
			tctx := tenantpg.WithTenant(ctx, "t01")
			tp := mustOpenDB(withParams(base, "tenant_user={user}.{tenant}"))
			tpOpen, err := sql.Open("tenantpg", withParams(base, "tenant_user={user}.{tenant}"))
			if err != nil {
				return err
			}
			cc, err := pgx.ParseConfig(withParams(rt.url, "default_query_exec_mode="+rt.mode, "user=app.t01"))
			if err != nil {
				return err
			}
			sdb := stdlib.OpenDB(*cc)
			sdb.SetMaxOpenConns(8)
			sdb.SetMaxIdleConns(8)
			pool, err := pgxpool.New(ctx, withParams(base, "user=app.t01"))
			if err != nil {
				return err
			}
			fromPool := stdlib.OpenDBFromPool(pool)
			native, err := pgxpool.New(ctx, withParams(base, "user=app.t01"))
			if err != nil {
				return err
			}
			cs := []contender{
				{name: "stdlib.OpenDB", op: func(ctx context.Context, _, i int) error { return benchops.QueryInt(ctx, sdb, i) },
					fresh: func(context.Context) { sdb.SetMaxIdleConns(0); sdb.SetMaxIdleConns(8) }},
				{name: "tenantpg", op: func(_ context.Context, _, i int) error { return benchops.QueryInt(tctx, tp, i) },
					fresh: func(ctx context.Context) { resetTenantpg(ctx, tp, "t01") }},
				{name: "tenantpg (sql.Open)", op: func(_ context.Context, _, i int) error { return benchops.QueryInt(tctx, tpOpen, i) },
					fresh: func(ctx context.Context) { resetTenantpg(ctx, tpOpen, "t01") }},
				{name: "stdlib.OpenDBFromPool", op: func(ctx context.Context, _, i int) error { return benchops.QueryInt(ctx, fromPool, i) },
					fresh: func(context.Context) { fromPool.SetMaxIdleConns(0); fromPool.SetMaxIdleConns(2); pool.Reset() }},
				{name: "pgxpool (native)", fresh: func(context.Context) { native.Reset() },
					op: func(ctx context.Context, _, i int) error { return benchops.PoolQueryInt(ctx, native, i) }},
			}
			res := interleave(ctx, cs, b.o.rounds, workers, b.o.duration, nil)
			r.throughputTable(fmt.Sprintf("%s, %s, %d worker(s)", rt.name, rt.mode, workers), res, "stdlib.OpenDB", false)
			tp.Close()
			tpOpen.Close()
			sdb.Close()
			fromPool.Close()
			pool.Close()
			native.Close()
		}
	}
	return nil
}

// settingURL is the many-tenant route: one login, the tenant in the
// app.tenant_id startup parameter, so that any number of tenants needs no
// provisioning.
func (b *bench) settingURL() string {
	return withParams(b.env.DirectURL(b.env.AppUser, b.env.AppDatabase), "tenant_setting=app.tenant_id")
}

func tenantIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("x%05d", i)
	}
	return ids
}

// manyContenders builds tenantpg, a map of *sql.DB and a connection per
// query over ids, each with at most perTenant connections per tenant.
func (b *bench) manyContenders(ctx context.Context, ids []string, perTenant, budget int, sqlOpen bool) (cs []contender, err error) {
	dsn := withParams(b.settingURL(), fmt.Sprintf("pool_max_conns=%d", perTenant), "application_name=tenantpg")
	if budget > 0 {
		dsn = withParams(dsn, fmt.Sprintf("tenant_max_conns=%d", budget))
	}
	tp := mustOpenDB(dsn)
	var tpOpen *sql.DB
	if sqlOpen {
		tpOpen, err = sql.Open("tenantpg", strings.Replace(dsn, "application_name=tenantpg", "application_name=tenantpg-sqlopen", 1))
		if err != nil {
			return nil, err
		}
	}
	base, err := pgx.ParseConfig(b.env.DirectURL(b.env.AppUser, b.env.AppDatabase))
	if err != nil {
		return nil, err
	}
	perQuery := base.Copy()
	perQuery.RuntimeParams["application_name"] = "per-query"
	base.RuntimeParams["application_name"] = "map"
	dbs := benchops.MapOfDBs(base, ids, perTenant)
	pick := func(w, i int) string { return ids[rand.IntN(len(ids))] }
	warm := func(hold func(ctx context.Context, t string) error) func(context.Context) {
		return func(ctx context.Context) { benchops.Warm(ctx, ids, perTenant, hold) }
	}
	cs = []contender{
		{name: "map of *sql.DB", app: "map", op: func(ctx context.Context, w, i int) error {
			t := pick(w, i)
			return benchops.CheckSetting(ctx, dbs[t], t)
		}, warm: warm(func(ctx context.Context, t string) error {
			return benchops.Hold(ctx, dbs[t])
		}), close: func() {
			for _, db := range dbs {
				db.Close()
			}
		}},
		{name: "tenantpg", app: "tenantpg", op: func(ctx context.Context, w, i int) error {
			t := pick(w, i)
			return benchops.CheckSetting(tenantpg.WithTenant(ctx, t), tp, t)
		}, warm: warm(func(ctx context.Context, t string) error {
			return benchops.Hold(tenantpg.WithTenant(ctx, t), tp)
		}), close: func() { tp.Close() }},
	}
	if sqlOpen {
		cs = append(cs, contender{name: "tenantpg (sql.Open)", app: "tenantpg-sqlopen", op: func(ctx context.Context, w, i int) error {
			t := pick(w, i)
			return benchops.CheckSetting(tenantpg.WithTenant(ctx, t), tpOpen, t)
		}, warm: warm(func(ctx context.Context, t string) error {
			return benchops.Hold(tenantpg.WithTenant(ctx, t), tpOpen)
		}), close: func() { tpOpen.Close() }})
	}
	cs = append(cs, contender{name: "connection per query", app: "per-query", op: func(ctx context.Context, w, i int) error {
		t := pick(w, i)
		cc := perQuery.Copy()
		cc.RuntimeParams["app.tenant_id"] = t
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var got string
		if err := conn.QueryRow(ctx, "select current_setting('app.tenant_id')").Scan(&got); err != nil {
			return err
		}
		if got != t {
			return fmt.Errorf("got %q", got)
		}
		return nil
	}})
	return cs, nil
}

// many: 100 tenants, a random tenant per query.
func (b *bench) many(ctx context.Context, r *report) error {
	ids := tenantIDs(100)
	cs, err := b.manyContenders(ctx, ids, 2, 0, true)
	if err != nil {
		return err
	}
	defer closeAll(cs)
	r.section("2. 100 tenants, a random tenant per query",
		"8 workers; every query checks that `current_setting('app.tenant_id')` is its tenant's. "+
			"Per-tenant limit 2 connections for tenantpg (`pool_max_conns=2`) and the map of `*sql.DB` (`SetMaxOpenConns(2)`, `SetMaxIdleConns(2)`); "+
			"the connection-per-query approach opens and closes a pgx connection for every query. "+
			"Server connections are the peak of `pg_stat_activity` during the runs. Ratios are against the map.")
	res := interleave(ctx, cs, b.o.rounds, 8, b.o.duration, b.serverConns)
	r.throughputTable("100 tenants, 8 workers", res, "map of *sql.DB", true)
	m := &manyResult{}
	for _, s := range res {
		switch s.name {
		case "tenantpg":
			m.tenantpg = s
		case "map of *sql.DB":
			m.mapDB = s
		case "connection per query":
			m.perQuery = s
		}
	}
	r.many = m
	return nil
}

func closeAll(cs []contender) {
	for _, c := range cs {
		if c.close != nil {
			c.close()
		}
	}
}

// huge: 10,000 tenants round-robin under a budget of 32.
func (b *bench) huge(ctx context.Context, r *report) error {
	n := 10000
	if b.o.quick {
		n = 1000
	}
	const budget, workers = 32, 16
	ids := tenantIDs(n)
	b.waitServerConns(ctx, 0)
	dsn := withParams(b.settingURL(), fmt.Sprintf("tenant_max_conns=%d", budget), "pool_max_conns=2", "tenant_pool_idle=2s", "application_name=huge")
	before := heapLive()
	writeHeap(b.o.memprofile, "before")
	db := mustOpenDB(dsn)
	defer db.Close()
	var next int64
	var mu sync.Mutex
	peakHeap := before
	stop := make(chan struct{})
	heapDone := make(chan struct{})
	go func() {
		defer close(heapDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if h := heapLive(); h > peakHeap {
					peakHeap = h
				}
			}
		}
	}()
	c := contender{name: "tenantpg", app: "huge", op: func(ctx context.Context, w, i int) error {
		mu.Lock()
		k := next
		next++
		mu.Unlock()
		if k >= int64(len(ids)) {
			return errStop
		}
		t := ids[k]
		return benchops.CheckSetting(tenantpg.WithTenant(ctx, t), db, t)
	}}
	// Run until every tenant was served once.
	res := runUntil(ctx, c, workers, func() bool { mu.Lock(); defer mu.Unlock(); return next >= int64(len(ids)) }, b.serverConns)
	close(stop)
	<-heapDone
	st, err := tenantpg.DBStats(db)
	if err != nil {
		return err
	}
	during := peakHeap
	// Wait for the reaper.
	reapStart := time.Now()
	for time.Since(reapStart) < 30*time.Second {
		s, _ := tenantpg.DBStats(db)
		if len(s.Pools) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	reapTook := time.Since(reapStart)
	after := heapLive()
	writeHeap(b.o.memprofile, "after")
	stAfter, _ := tenantpg.DBStats(db)
	r.section(fmt.Sprintf("3. %d tenants round-robin, budget %d", n, budget),
		fmt.Sprintf("%d workers, each query for the next tenant in turn (so nearly every query needs a connection its tenant does not have), "+
			"`tenant_max_conns=%d`, `pool_max_conns=2`, `tenant_pool_idle=2s`. Heap is the live heap (`runtime.MemStats.HeapAlloc` after two GCs) of the benchmark process; \"before\" is taken before the `*sql.DB` is opened.", workers, budget))
	r.printf("| figure | value |\n|---|---|\n")
	r.printf("| queries | %d (%d errors%s) |\n", res.ops, res.errs, errNote(res.firstErr))
	r.printf("| throughput | %.0f queries/s |\n", res.opsPerSec)
	r.printf("| latency p50 / p99 | %s / %s |\n", round(res.p50), round(res.p99))
	r.printf("| peak connections held by tenantpg | %d (budget %d) |\n", st.PeakConns, budget)
	r.printf("| peak server backends (pg_stat_activity) | %d |\n", res.peakServer)
	r.printf("| physical connections opened | %d |\n", st.Dials)
	r.printf("| budget waits / errors | %d / %d |\n", st.BudgetWaits, st.BudgetErrors)
	r.printf("| pools created / evicted for the budget / reaped | %d / %d / %d |\n", st.PoolsCreated, st.EvictedPools, stAfter.PoolsReaped)
	r.printf("| heap before / peak during / after reaping | %s / %s / %s (after/before = %.2f) |\n",
		mib(before), mib(during), mib(after), float64(after)/float64(before))
	r.printf("| pools left after reaping (%s) | %d |\n\n", round(reapTook), len(stAfter.Pools))
	r.huge = &hugeResult{errs: res.errs, peakConns: st.PeakConns, peakServer: res.peakServer, budget: budget,
		memRatio: float64(after) / float64(before)}
	return nil
}

// runUntil runs c until done reports true.
func runUntil(ctx context.Context, c contender, workers int, done func() bool, count sampler) runResult {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for !done() && rctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	return runWhile(ctx, rctx, c, workers, count)
}

// writeHeap writes a heap profile to prefix-stage.pprof when prefix is set.
func writeHeap(prefix, stage string) {
	if prefix == "" {
		return
	}
	f, err := os.Create(prefix + "-" + stage + ".pprof")
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("heap").WriteTo(f, 0)
}

// heapLive returns the live heap (HeapAlloc) after two collections: the
// bytes of reachable objects. HeapInuse would add the free slots of spans
// that still hold a live object, which after a burst of allocations
// measures fragmentation rather than what is retained.
func heapLive() uint64 {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// cold: the first query of a tenant against its second.
func (b *bench) cold(ctx context.Context, r *report) error {
	n := 100
	if b.o.quick {
		n = 20
	}
	db := mustOpenDB(b.settingURL())
	defer db.Close()
	var cold, warm []time.Duration
	for i, t := range tenantIDs(n) {
		t = fmt.Sprintf("c%s-%d", t, i)
		tctx := tenantpg.WithTenant(ctx, t)
		t0 := time.Now()
		if err := benchops.CheckSetting(tctx, db, t); err != nil {
			return err
		}
		cold = append(cold, time.Since(t0))
		t0 = time.Now()
		if err := benchops.CheckSetting(tctx, db, t); err != nil {
			return err
		}
		warm = append(warm, time.Since(t0))
	}
	r.section("4. Cold tenant",
		fmt.Sprintf("%d new tenants one after another; the first query of each resolves the tenant, creates its pool, dials, "+
			"authenticates (SCRAM), runs the identity check and then the query; the second query reuses the connection.", n))
	r.printf("| query | p50 | p99 |\n|---|---|---|\n")
	r.printf("| first (cold) | %s | %s |\n", round(percentile(cold, .5)), round(percentile(cold, .99)))
	r.printf("| second (warm) | %s | %s |\n", round(percentile(warm, .5)), round(percentile(warm, .99)))
	r.printf("\nCold/warm at the median: %.1fx.\n\n", float64(percentile(cold, .5))/float64(percentile(warm, .5)))
	return nil
}

// checkout: Go benchmarks of one checkout (db.Conn + Close) and one QueryRow,
// tenantpg against stdlib.OpenDBFromPool on the same server.
func (b *bench) checkout(ctx context.Context, r *report) error {
	env := b.env
	url := withParams(env.DirectURL(env.AppUser, env.AppDatabase), "pool_max_conns=8", "default_query_exec_mode=cache_statement")
	tctx := tenantpg.WithTenant(ctx, "t01")
	tp := mustOpenDB(withParams(url, "tenant_user={user}.{tenant}"))
	defer tp.Close()
	tpBudget := mustOpenDB(withParams(url, "tenant_user={user}.{tenant}", "tenant_max_conns=64"))
	defer tpBudget.Close()
	pool, err := pgxpool.New(ctx, withParams(url, "user=app.t01"))
	if err != nil {
		return err
	}
	defer pool.Close()
	fp := stdlib.OpenDBFromPool(pool)
	defer fp.Close()
	type cand struct {
		name string
		db   *sql.DB
		ctx  context.Context
	}
	cands := []cand{{"stdlib.OpenDBFromPool", fp, ctx}, {"tenantpg", tp, tctx}, {"tenantpg, with budget", tpBudget, tctx}}
	type acc struct{ ns, allocs, qns, qallocs []float64 }
	accs := make([]acc, len(cands))
	rounds := b.o.rounds
	for round := 0; round < rounds; round++ {
		for k := range cands {
			i := (k + round) % len(cands)
			c := cands[i]
			res := testing.Benchmark(func(tb *testing.B) {
				tb.ReportAllocs()
				for tb.Loop() {
					conn, err := c.db.Conn(c.ctx)
					if err != nil {
						tb.Fatal(err)
					}
					conn.Close()
				}
			})
			accs[i].ns = append(accs[i].ns, float64(res.NsPerOp()))
			accs[i].allocs = append(accs[i].allocs, float64(res.AllocsPerOp()))
			res = testing.Benchmark(func(tb *testing.B) {
				tb.ReportAllocs()
				for j := 0; tb.Loop(); j++ {
					if err := benchops.QueryInt(c.ctx, c.db, j); err != nil {
						tb.Fatal(err)
					}
				}
			})
			accs[i].qns = append(accs[i].qns, float64(res.NsPerOp()))
			accs[i].qallocs = append(accs[i].qallocs, float64(res.AllocsPerOp()))
		}
	}
	r.section("5. Routing cost per checkout (Go benchmarks)",
		fmt.Sprintf("`testing.Benchmark` in-process, %d interleaved rounds, medians. Checkout is `db.Conn(ctx)` + `Close()` with no query; "+
			"QueryRow is `select $1::int` direct in `cache_statement` mode. The difference to `stdlib.OpenDBFromPool` is what routing costs.", rounds))
	r.printf("| contender | checkout ns/op | allocs/op | over OpenDBFromPool | QueryRow ns/op | allocs/op |\n|---|---|---|---|---|---|\n")
	base := median(accs[0].ns)
	baseAllocs := median(accs[0].allocs)
	for i, c := range cands {
		ns, al := median(accs[i].ns), median(accs[i].allocs)
		over := ""
		if i > 0 {
			over = fmt.Sprintf("%+.0f ns, %+.0f allocs", ns-base, al-baseAllocs)
			r.routing = append(r.routing, routingResult{name: c.name, overNs: ns - base, overAllocs: al - baseAllocs})
		}
		r.printf("| %s | %.0f | %.0f | %s | %.0f | %.0f |\n", c.name, ns, al, over, median(accs[i].qns), median(accs[i].qallocs))
	}
	r.printf("\n")
	return nil
}

// chartBudget is tenantpg's budget in the chart: what the map of *sql.DB
// holds at 100 tenants, so that up to there both have the same room.
const chartBudget = 200

// chart: throughput against the number of tenants.
func (b *bench) chart(ctx context.Context, r *report) error {
	counts := []int{1, 10, 100, 1000}
	rounds, dur := 3, b.o.duration
	if b.o.quick {
		rounds = 1
	}
	ch := &chart{title: "Throughput against tenant count (8 workers, random tenant per query)", xs: counts}
	r.section("6. Throughput against tenant count",
		fmt.Sprintf("8 workers, a random tenant per query, per-tenant limit 2 connections; tenantpg with `tenant_max_conns=%d`, "+
			"what the map uses at 100 tenants. ", chartBudget)+
			"The map of `*sql.DB` has no global cap: with many tenants it runs into the server's `max_connections` (1200 here). "+
			"Chart: `benchmarks.svg`.")
	r.printf("| tenants | contender | queries/s | errors | peak server connections |\n|---|---|---|---|---|\n")
	series := map[string][]float64{}
	var order []string
	for _, n := range counts {
		// Contenders run one after another here, each closed before the
		// next starts: with 1000 tenants the map of *sql.DB alone fills the
		// server, which would fail the others if they shared the rounds.
		probe, err := b.manyContenders(ctx, tenantIDs(1), 2, chartBudget, false)
		if err != nil {
			return err
		}
		closeAll(probe)
		for k := range probe {
			b.waitServerConns(ctx, 0)
			cs, err := b.manyContenders(ctx, tenantIDs(n), 2, chartBudget, false)
			if err != nil {
				return err
			}
			res := interleave(ctx, cs[k:k+1], rounds, 8, dur, b.serverConns)
			closeAll(cs)
			s := res[0]
			if _, ok := series[s.name]; !ok {
				order = append(order, s.name)
			}
			series[s.name] = append(series[s.name], s.median)
			r.printf("| %d | %s | %.0f | %d%s | %d |\n", n, s.name, s.median, s.errs, errNote(s.firstErr), s.peakServer)
		}
	}
	for _, name := range order {
		ch.series = append(ch.series, chartSeries{name: name, ys: series[name]})
	}
	b.chartData = ch
	r.printf("\n")
	fmt.Fprintln(os.Stderr, "chart done")
	return nil
}

func withParams(url string, params ...string) string {
	for _, p := range params {
		sep := "?"
		if containsByte(url, '?') {
			sep = "&"
		}
		url += sep + p
	}
	return url
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}
