// Command tenantpg-bench measures tenantpg against the alternatives users
// have, on a throwaway PostgreSQL and PgBouncer (internal/pgtest). Every
// comparison runs its contenders interleaved in the same process, in a new
// order each round, so that machine noise falls on all of them, and reports
// medians and per-round ratios. It writes a Markdown report and an SVG
// chart. With TPBENCH_ROUNDS set it also prints every round's throughput to
// stderr, for studying the noise.
//
//	make bench-report   (or: go run ./cmd/tenantpg-bench -out docs/benchmarks.md -svg docs/benchmarks.svg)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

type options struct {
	rounds   int
	duration time.Duration
	quick    bool
	only     string
	out      string
	svg      string

	memprofile string
	countChild bool
}

func main() {
	var o options
	// With 25 rounds the 96% interval of a ratio's median (medianCI) runs
	// from the 8th to the 18th round's ratio, about ±0.5 standard
	// deviations of one round; with 9 it ran from the 2nd to the 8th of 9,
	// nearly their whole range: ±5-10% on this shared 2-core VM, wider than
	// the differences the targets are about.
	flag.IntVar(&o.rounds, "rounds", 25, "interleaved rounds per comparison")
	flag.DurationVar(&o.duration, "duration", time.Second, "duration of one contender's run in a round")
	flag.BoolVar(&o.quick, "quick", false, "short runs (smoke test of the program)")
	flag.StringVar(&o.only, "only", "", "comma separated scenarios to run: single,many,huge,cold,checkout,chart,counted (default all)")
	flag.StringVar(&o.out, "out", "", "write the Markdown report here (default stdout only)")
	flag.StringVar(&o.svg, "svg", "", "write the throughput chart here")
	flag.StringVar(&o.memprofile, "memprofile", "", "write heap profiles PREFIX-before.pprof and PREFIX-after.pprof around the huge scenario")
	flag.BoolVar(&o.countChild, "count-child", false, "internal: run the counted contender (section 7) whose JSON spec is on stdin and print its report")
	flag.Parse()
	if o.countChild {
		if err := countChild(); err != nil {
			fmt.Fprintln(os.Stderr, "tenantpg-bench -count-child:", err)
			os.Exit(1)
		}
		return
	}
	if o.quick {
		o.rounds, o.duration = 2, 300*time.Millisecond
	}
	if o.memprofile != "" {
		runtime.MemProfileRate = 1
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "tenantpg-bench:", err)
		os.Exit(1)
	}
}

func (o options) want(s string) bool {
	if o.only == "" {
		return true
	}
	for _, x := range strings.Split(o.only, ",") {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}

func run(o options) error {
	ctx := context.Background()
	if _, err := exec.LookPath("valgrind"); err != nil && o.want("counted") {
		return errNoValgrind // before half an hour of other sections
	}
	fmt.Fprintln(os.Stderr, "starting throwaway PostgreSQL and PgBouncer ...")
	env, err := pgtest.Start(ctx, pgtest.Options{Tenants: []string{"t01"}, PoolSize: 20,
		BouncerSettings: map[string]string{"max_client_conn": "4000"}})
	if err != nil {
		return err
	}
	defer env.Close()
	// Room for every contender's connections at once: the map of *sql.DB
	// alone may hold two per tenant.
	if err := raiseMaxConnections(ctx, env, 1200); err != nil {
		return err
	}
	b, err := newBench(ctx, env, o)
	if err != nil {
		return err
	}
	defer b.close()

	r := &report{}
	r.header(env, o)
	steps := []struct {
		name string
		fn   func(context.Context, *report) error
	}{
		{"single", b.single},
		{"many", b.many},
		{"cold", b.cold},
		{"checkout", b.checkout},
		{"chart", b.chart},
		{"huge", b.huge},
		{"counted", b.counted},
	}
	for _, s := range steps {
		if !o.want(s.name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", s.name)
		if err := s.fn(ctx, r); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	r.targetsSection()
	fmt.Print(r.String())
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(r.String()), 0o644); err != nil {
			return err
		}
	}
	if o.svg != "" && b.chartData != nil {
		if err := os.WriteFile(o.svg, []byte(b.chartData.svg()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func machine() string {
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

func raiseMaxConnections(ctx context.Context, env *pgtest.Env, n int) error {
	c, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, "postgres"))
	if err != nil {
		return err
	}
	_, err = c.Exec(ctx, fmt.Sprintf("alter system set max_connections = %d", n))
	c.Close(ctx)
	if err != nil {
		return err
	}
	if err := env.RestartPostgres(ctx); err != nil {
		return err
	}
	c, err = pgx.Connect(ctx, env.DirectURL(env.SuperUser, "postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var got int
	if err := c.QueryRow(ctx, "select current_setting('max_connections')::int").Scan(&got); err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("max_connections is %d after restart, want %d", got, n)
	}
	return nil
}
