//go:build unix

// Command tenantpg-probe measures tenantpg's one-tenant overhead against
// stdlib.OpenDB more finely than tenantpg-bench: many interleaved rounds of
// two to four contenders, the median of per-round throughput ratios with
// its quartiles, and the client CPU per query (getrusage), which shows
// costs that throughput hides in noise. With -checkout it runs db.Conn and
// Close without a query, which isolates the checkout path. Run it several
// times: which server backend and core a connection gets is drawn once per
// process and moves one process's ratio by about ±1%.
//
//	go run ./cmd/tenantpg-probe -workers 8 -rounds 20
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

type contender struct {
	name string
	db   *sql.DB
	ctx  context.Context
}

func main() {
	workers := flag.Int("workers", 8, "concurrent goroutines")
	rounds := flag.Int("rounds", 20, "interleaved rounds")
	dur := flag.Duration("duration", time.Second, "one contender's run in a round")
	checkout := flag.Bool("checkout", false, "db.Conn and Close only, no query")
	all := flag.Bool("all", false, "also stdlib.OpenDB queried with tenantpg's context, and OpenDBFromPool keeping its connections")
	flag.Parse()
	if err := run(*workers, *rounds, *dur, *checkout, *all); err != nil {
		fmt.Fprintln(os.Stderr, "tenantpg-probe:", err)
		os.Exit(1)
	}
}

func run(workers, rounds int, dur time.Duration, checkout, all bool) error {
	ctx := context.Background()
	env, err := pgtest.Start(ctx, pgtest.Options{Tenants: []string{"t01"}, PoolSize: 20})
	if err != nil {
		return err
	}
	defer env.Close()
	// The URL has ?sslmode=disable. pool_max_conns is for pools only: pgx
	// would send it to the server as a setting.
	direct := env.DirectURL(env.AppUser, env.AppDatabase) + "&default_query_exec_mode=cache_statement"
	base := direct + "&pool_max_conns=8"
	cfg, err := tenantpg.ParseConfig(base + "&tenant_user={user}.{tenant}")
	if err != nil {
		return err
	}
	tp, err := tenantpg.OpenDB(cfg)
	if err != nil {
		return err
	}
	defer tp.Close()
	cc, err := pgx.ParseConfig(direct + "&user=app.t01")
	if err != nil {
		return err
	}
	sdb := stdlib.OpenDB(*cc)
	sdb.SetMaxOpenConns(8)
	sdb.SetMaxIdleConns(8)
	defer sdb.Close()
	tctx := tenantpg.WithTenant(ctx, "t01")
	cs := []contender{{"stdlib.OpenDB", sdb, ctx}, {"tenantpg", tp, tctx}}
	if all {
		pool, err := pgxpool.New(ctx, base+"&user=app.t01")
		if err != nil {
			return err
		}
		fdb := stdlib.OpenDBFromPool(pool)
		fdb.SetMaxOpenConns(8)
		fdb.SetMaxIdleConns(8)
		defer fdb.Close()
		cs = append(cs, contender{"stdlib.OpenDB, tenant ctx", sdb, tctx}, contender{"OpenDBFromPool, kept", fdb, ctx})
	}
	tput := make(map[string][]float64)
	cpu := make(map[string][]float64)
	order := slices.Clone(cs)
	for range rounds {
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, c := range order {
			if _, _, err := measure(c, workers, dur/10, checkout); err != nil { // warm-up
				return err
			}
			c0 := cpuTime()
			n, el, err := measure(c, workers, dur, checkout)
			if err != nil {
				return err
			}
			tput[c.name] = append(tput[c.name], float64(n)/el.Seconds())
			cpu[c.name] = append(cpu[c.name], float64(cpuTime()-c0)/float64(n))
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
		fmt.Printf("%-26s %.4f of %s (quartiles %.4f-%.4f), client CPU per op %.4fx, %.0f ops/s\n",
			c.name, r[len(r)/2], base0, r[len(r)/4], r[3*len(r)/4], cr[len(cr)/2], median(tput[c.name]))
	}
	return nil
}

// measure runs workers goroutines for d and returns the operations done.
func measure(c contender, workers int, d time.Duration, checkout bool) (int64, time.Duration, error) {
	var ops atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				if err := op(c, i, checkout); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, 0, fmt.Errorf("%s: %w", c.name, err)
	}
	return ops.Load(), time.Since(start), nil
}

func op(c contender, i int, checkout bool) error {
	if checkout {
		conn, err := c.db.Conn(c.ctx)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	var n int
	if err := c.db.QueryRowContext(c.ctx, "select $1::int", i).Scan(&n); err != nil {
		return err
	}
	if n != i {
		return fmt.Errorf("select $1 returned %d for %d", n, i)
	}
	return nil
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
