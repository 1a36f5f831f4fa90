//go:build unix

// Command tenantpg-probe measures tenantpg's overhead against database/sql
// alternatives more finely than tenantpg-bench: many interleaved rounds of
// two to four contenders, the median of per-round throughput ratios with
// its quartiles, and the client CPU and allocations per query (getrusage,
// runtime.MemStats), which show costs that throughput hides in noise.
//
// By default it compares one tenant against stdlib.OpenDB directly in
// cache_statement mode, with -bouncer through PgBouncer in exec mode (the
// routes of tenantpg-bench's section 1); with -checkout it runs db.Conn and
// Close without a query, which isolates the checkout path. With -tenants N it queries a random one of N tenants per query
// (the setting route, pool_max_conns=2) against a map of one *sql.DB per
// tenant, as section 2 of tenantpg-bench does. Run it several times: which
// server backend and core a connection gets is drawn once per process and
// moves one process's ratio by about ±1%. With -cpuprofile it writes a CPU
// profile whose samples carry the contender's name as the label contender,
// so that one run profiles both sides: go tool pprof -tagfocus
// contender=tenantpg (or =stdlib.OpenDB).
//
//	go run ./cmd/tenantpg-probe -workers 8 -rounds 20
//	go run ./cmd/tenantpg-probe -bouncer -workers 8
//	go run ./cmd/tenantpg-probe -tenants 60
//	go run ./cmd/tenantpg-probe -cpuprofile /tmp/probe.prof
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/benchops"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// contender is one approach: op runs its i-th operation of a worker.
type contender struct {
	name string
	op   func(i int) error
}

func main() {
	workers := flag.Int("workers", 8, "concurrent goroutines")
	rounds := flag.Int("rounds", 20, "interleaved rounds")
	dur := flag.Duration("duration", time.Second, "one contender's run in a round")
	checkout := flag.Bool("checkout", false, "db.Conn and Close only, no query")
	bouncer := flag.Bool("bouncer", false, "one tenant through PgBouncer in exec mode instead of directly in cache_statement")
	all := flag.Bool("all", false, "also stdlib.OpenDB queried with tenantpg's context, and OpenDBFromPool keeping its connections")
	tenants := flag.Int("tenants", 0, "if > 0: a random one of that many tenants per query, tenantpg against a map of *sql.DB (PostgreSQL's max_connections of 300 allows up to 70)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file, samples labelled contender=<name> (go tool pprof -tagfocus)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "tenantpg-probe:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx := context.Background()
	env, err := pgtest.Start(ctx, pgtest.Options{Tenants: []string{"t01"}, PoolSize: 20})
	if err == nil {
		defer env.Close()
		var cs []contender
		var done func()
		if *tenants > 0 {
			cs, done, err = manyTenants(ctx, env, *tenants)
		} else {
			cs, done, err = oneTenant(ctx, env, *checkout, *all, *bouncer)
		}
		if err == nil {
			defer done()
			err = compare(cs, *workers, *rounds, *dur)
		}
	}
	if err != nil {
		pprof.StopCPUProfile() // os.Exit skips the deferred one
		fmt.Fprintln(os.Stderr, "tenantpg-probe:", err)
		os.Exit(1)
	}
}

// oneTenant returns tenantpg and stdlib.OpenDB (and with all, two more)
// querying tenant t01, or only checking out with checkout.
func oneTenant(ctx context.Context, env *pgtest.Env, checkout, all, bouncer bool) ([]contender, func(), error) {
	// The URL has ?sslmode=disable. pool_max_conns is for pools only: pgx
	// would send it to the server as a setting.
	url := env.DirectURL(env.AppUser, env.AppDatabase) + "&default_query_exec_mode=cache_statement"
	if bouncer { // as section 1 of tenantpg-bench runs PgBouncer
		url = env.BouncerURL(env.AppUser, env.AppDatabase) + "&default_query_exec_mode=exec"
	}
	base := url + "&pool_max_conns=8"
	cfg, err := tenantpg.ParseConfig(base + "&tenant_user={user}.{tenant}")
	if err != nil {
		return nil, nil, err
	}
	tp, err := tenantpg.OpenDB(cfg)
	if err != nil {
		return nil, nil, err
	}
	cc, err := pgx.ParseConfig(url + "&user=app.t01")
	if err != nil {
		return nil, nil, err
	}
	sdb := stdlib.OpenDB(*cc)
	sdb.SetMaxOpenConns(8)
	sdb.SetMaxIdleConns(8)
	dbs := []*sql.DB{tp, sdb}
	done := func() {
		for _, db := range dbs {
			db.Close()
		}
	}
	tctx := tenantpg.WithTenant(ctx, "t01")
	cs := []contender{oneOp("stdlib.OpenDB", sdb, ctx, checkout), oneOp("tenantpg", tp, tctx, checkout)}
	if all {
		pool, err := pgxpool.New(ctx, base+"&user=app.t01")
		if err != nil {
			done()
			return nil, nil, err
		}
		fdb := stdlib.OpenDBFromPool(pool)
		fdb.SetMaxOpenConns(8)
		fdb.SetMaxIdleConns(8)
		dbs = append(dbs, fdb)
		cs = append(cs, oneOp("stdlib.OpenDB, tenant ctx", sdb, tctx, checkout), oneOp("OpenDBFromPool, kept", fdb, ctx, checkout))
	}
	return cs, done, nil
}

// oneOp runs select $1::int on db under ctx, or with checkout db.Conn and
// Close without a query.
func oneOp(name string, db *sql.DB, ctx context.Context, checkout bool) contender {
	if checkout {
		return contender{name, func(int) error {
			conn, err := db.Conn(ctx)
			if err != nil {
				return err
			}
			return conn.Close()
		}}
	}
	return contender{name, func(i int) error { return benchops.QueryInt(ctx, db, i) }}
}

// manyTenants returns a map of one *sql.DB per tenant and tenantpg, each
// querying a random one of n tenants per operation with at most two
// connections per tenant, warmed to two connections per tenant.
func manyTenants(ctx context.Context, env *pgtest.Env, n int) ([]contender, func(), error) {
	direct := env.DirectURL(env.AppUser, env.AppDatabase)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("x%05d", i)
	}
	cfg, err := tenantpg.ParseConfig(direct + "&pool_max_conns=2&tenant_setting=app.tenant_id")
	if err != nil {
		return nil, nil, err
	}
	tp, err := tenantpg.OpenDB(cfg)
	if err != nil {
		return nil, nil, err
	}
	base, err := pgx.ParseConfig(direct)
	if err != nil {
		tp.Close()
		return nil, nil, err
	}
	dbs := benchops.MapOfDBs(base, ids, 2)
	done := func() {
		tp.Close()
		for _, db := range dbs {
			db.Close()
		}
	}
	// Two connections per tenant for each, as a steady load would open.
	benchops.Warm(ctx, ids, 2, func(ctx context.Context, t string) error { return benchops.Hold(ctx, dbs[t]) })
	benchops.Warm(ctx, ids, 2, func(ctx context.Context, t string) error {
		return benchops.Hold(tenantpg.WithTenant(ctx, t), tp)
	})
	pick := func() string { return ids[rand.IntN(len(ids))] }
	return []contender{
		{"map of *sql.DB", func(int) error { t := pick(); return benchops.CheckSetting(ctx, dbs[t], t) }},
		{"tenantpg", func(int) error { t := pick(); return benchops.CheckSetting(tenantpg.WithTenant(ctx, t), tp, t) }},
	}, done, nil
}

// compare runs the contenders in rounds, each round in shuffled order
// after a short warm-up, and prints each contender's median ratio of
// throughput, client CPU and allocations per operation to the first one's.
func compare(cs []contender, workers, rounds int, dur time.Duration) error {
	tput := make(map[string][]float64)
	cpu := make(map[string][]float64)
	allocs := make(map[string][]float64)
	order := slices.Clone(cs)
	for range rounds {
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, c := range order {
			if _, _, err := measure(c, workers, dur/10); err != nil { // warm-up
				return err
			}
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			c0 := cpuTime()
			n, el, err := measure(c, workers, dur)
			if err != nil {
				return err
			}
			cpu[c.name] = append(cpu[c.name], float64(cpuTime()-c0)/float64(n))
			runtime.ReadMemStats(&m1)
			tput[c.name] = append(tput[c.name], float64(n)/el.Seconds())
			allocs[c.name] = append(allocs[c.name], float64(m1.Mallocs-m0.Mallocs)/float64(n))
		}
	}
	base0 := cs[0].name
	for _, c := range cs {
		var r, cr []float64
		for i := range tput[c.name] {
			r = append(r, tput[c.name][i]/tput[base0][i])
			cr = append(cr, cpu[c.name][i]/cpu[base0][i])
		}
		slices.Sort(r)
		slices.Sort(cr)
		fmt.Printf("%-26s %.4f of %s (quartiles %.4f-%.4f), client CPU per op %.4fx (%.1f µs), %.1f allocs/op, %.0f ops/s\n",
			c.name, r[len(r)/2], base0, r[len(r)/4], r[3*len(r)/4], cr[len(cr)/2],
			median(cpu[c.name])/1e3, median(allocs[c.name]), median(tput[c.name]))
	}
	return nil
}

// measure runs workers goroutines for d and returns the operations done.
func measure(c contender, workers int, d time.Duration) (int64, time.Duration, error) {
	var ops atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	labels := pprof.Labels("contender", c.name)
	for range workers {
		wg.Go(func() {
			pprof.Do(context.Background(), labels, func(context.Context) {
				for i := 0; time.Now().Before(stop); i++ {
					if err := c.op(i); err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					ops.Add(1)
				}
			})
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, 0, fmt.Errorf("%s: %w", c.name, err)
	}
	return ops.Load(), time.Since(start), nil
}

// cpuTime returns the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
