package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/benchops"
)

// Section 7 counts the client's work per query instead of timing it: the
// user-space instructions of a process that runs one contender
// (valgrind's cachegrind, which counts instructions whatever the
// hypervisor steals), and what it sends and receives on its sockets. Time
// on this VM cannot resolve a few percent in one run (section "Where
// tenantpg's time goes"); counts vary by a few percent from one process to
// the next, and not with the machine's load.

// countSpec is one counted child process: a contender with one worker,
// warm queries and then n measured ones.
type countSpec struct {
	Contender string `json:"contender"`
	URL       string `json:"url"`     // the route (login app), with the exec mode for one tenant
	Tenants   int    `json:"tenants"` // 0: one tenant (QueryInt), else that many tenants, a random one per query (CheckSetting)
	Warm      int    `json:"warm"`
	N         int    `json:"n"`
}

// wireCount is what a child's connections wrote and read during its
// measured queries.
type wireCount struct {
	Writes, Reads     int64
	BytesOut, BytesIn int64
	Dials             int64
	MeasuredErrs      int
	FirstErr          string
}

// countingConn counts the calls and bytes of a connection's socket.
type countingConn struct {
	net.Conn
	w *wireCounters
}

// wireCounters are the totals of a child's countingConns.
type wireCounters struct {
	writes, reads, out, in, dials atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.reads.Add(1)
	c.w.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.writes.Add(1)
	c.w.out.Add(int64(n))
	return n, err
}

// dial is pgconn's default dialer (a zero net.Dialer) with the socket
// counted.
func (w *wireCounters) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	w.dials.Add(1)
	return &countingConn{Conn: c, w: w}, nil
}

// openTenantpg opens tenantpg on dsn with its connections counted.
func (w *wireCounters) openTenantpg(dsn string) (*sql.DB, error) {
	cfg, err := tenantpg.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.Pool.ConnConfig.DialFunc = w.dial
	return tenantpg.OpenDB(cfg)
}

// countChild runs spec in this process and prints its wireCount as JSON.
func countChild(arg string) error {
	var spec countSpec
	if err := json.Unmarshal([]byte(arg), &spec); err != nil {
		return err
	}
	ctx := context.Background()
	var wire wireCounters
	op, closeAll, err := countedOp(ctx, spec, &wire)
	if err != nil {
		return err
	}
	defer closeAll()
	rng := rand.New(rand.NewPCG(7, 11))
	tenant := func() int { return rng.IntN(max(spec.Tenants, 1)) }
	var res wireCount
	// Warm: every tenant once (so that each has its connection), then
	// random ones.
	for i := range max(spec.Tenants, 1) {
		if err := op(i, i); err != nil {
			return fmt.Errorf("warm query: %w", err)
		}
	}
	for i := range spec.Warm {
		if err := op(tenant(), i); err != nil {
			return fmt.Errorf("warm query: %w", err)
		}
	}
	w0, r0, o0, i0, d0 := wire.writes.Load(), wire.reads.Load(), wire.out.Load(), wire.in.Load(), wire.dials.Load()
	for i := range spec.N {
		if err := op(tenant(), i); err != nil {
			res.MeasuredErrs++
			if res.FirstErr == "" {
				res.FirstErr = err.Error()
			}
		}
	}
	res.Writes, res.Reads = wire.writes.Load()-w0, wire.reads.Load()-r0
	res.BytesOut, res.BytesIn = wire.out.Load()-o0, wire.in.Load()-i0
	res.Dials = wire.dials.Load() - d0
	return json.NewEncoder(os.Stdout).Encode(res)
}

// countedOp opens spec's contender with its connections counted by wire
// and returns one query for tenant index t (ignored with one tenant) and
// operation number i.
func countedOp(ctx context.Context, spec countSpec, wire *wireCounters) (func(t, i int) error, func(), error) {
	if spec.Tenants > 0 {
		ids := tenantIDs(spec.Tenants)
		switch spec.Contender {
		case "tenantpg":
			db, err := wire.openTenantpg(withParams(spec.URL, "tenant_setting=app.tenant_id", "pool_max_conns=2"))
			if err != nil {
				return nil, nil, err
			}
			ctxs := make([]context.Context, len(ids))
			for i, id := range ids {
				ctxs[i] = tenantpg.WithTenant(ctx, id)
			}
			return func(t, _ int) error { return benchops.CheckSetting(ctxs[t], db, ids[t]) }, func() { db.Close() }, nil
		case "map of *sql.DB":
			base, err := pgx.ParseConfig(spec.URL)
			if err != nil {
				return nil, nil, err
			}
			base.DialFunc = wire.dial
			dbs := benchops.MapOfDBs(base, ids, 2)
			return func(t, _ int) error { return benchops.CheckSetting(ctx, dbs[ids[t]], ids[t]) }, func() {
				for _, db := range dbs {
					db.Close()
				}
			}, nil
		}
		return nil, nil, fmt.Errorf("no many-tenant contender %q", spec.Contender)
	}
	switch spec.Contender {
	case "tenantpg":
		db, err := wire.openTenantpg(withParams(spec.URL, "pool_max_conns=8", "tenant_user={user}.{tenant}"))
		if err != nil {
			return nil, nil, err
		}
		tctx := tenantpg.WithTenant(ctx, "t01")
		return func(_, i int) error { return benchops.QueryInt(tctx, db, i) }, func() { db.Close() }, nil
	case "stdlib.OpenDB":
		cc, err := pgx.ParseConfig(withParams(spec.URL, "user=app.t01"))
		if err != nil {
			return nil, nil, err
		}
		cc.DialFunc = wire.dial
		db := stdlib.OpenDB(*cc)
		db.SetMaxOpenConns(8)
		db.SetMaxIdleConns(8)
		return func(_, i int) error { return benchops.QueryInt(ctx, db, i) }, func() { db.Close() }, nil
	case "stdlib.OpenDBFromPool", "pgxpool (native)":
		pc, err := pgxpool.ParseConfig(withParams(spec.URL, "pool_max_conns=8", "user=app.t01"))
		if err != nil {
			return nil, nil, err
		}
		pc.ConnConfig.DialFunc = wire.dial
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return nil, nil, err
		}
		if spec.Contender == "pgxpool (native)" {
			return func(_, i int) error { return benchops.PoolQueryInt(ctx, pool, i) }, pool.Close, nil
		}
		db := stdlib.OpenDBFromPool(pool)
		return func(_, i int) error { return benchops.QueryInt(ctx, db, i) }, func() { db.Close(); pool.Close() }, nil
	}
	return nil, nil, fmt.Errorf("no one-tenant contender %q", spec.Contender)
}

// instrRefs finds cachegrind's "I refs:" total in its report.
var instrRefs = regexp.MustCompile(`I\s+refs:\s+([0-9,]+)`)

// instructions reads the instruction total from cachegrind's report, or
// fails when the report has none.
func instructions(report string) (uint64, error) {
	m := instrRefs.FindStringSubmatch(report)
	if m == nil {
		return 0, errors.New("no instruction count in valgrind's report")
	}
	return strconv.ParseUint(strings.ReplaceAll(m[1], ",", ""), 10, 64)
}

// countedRun is one child process under cachegrind: its user-space
// instructions in all and its wire counts.
type countedRun struct {
	instr uint64
	wire  wireCount
}

// runCounted runs spec in a child process of this program under cachegrind.
func runCounted(ctx context.Context, spec countSpec) (countedRun, error) {
	arg, err := json.Marshal(spec)
	if err != nil {
		return countedRun{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return countedRun{}, err
	}
	cmd := exec.CommandContext(ctx, "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
		self, "-count-child", string(arg))
	// One P: with more, the runtime's idle Ps spin looking for work while
	// the worker waits for the server, and under valgrind, which runs one
	// thread at a time, how long they spin depends on timing: up to 10^9
	// instructions from one process to the next.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return countedRun{}, fmt.Errorf("%s under valgrind: %w\n%s", spec.Contender, err, lastLines(stderr.String(), 20))
	}
	n, err := instructions(stderr.String())
	if err != nil {
		return countedRun{}, fmt.Errorf("%s: %w:\n%s", spec.Contender, err, lastLines(stderr.String(), 20))
	}
	run := countedRun{instr: n}
	if err := json.Unmarshal(stdout.Bytes(), &run.wire); err != nil {
		return countedRun{}, fmt.Errorf("%s: child's report: %w", spec.Contender, err)
	}
	if run.wire.MeasuredErrs > 0 {
		return countedRun{}, fmt.Errorf("%s: %d of %d counted queries failed, first: %s", spec.Contender, run.wire.MeasuredErrs, spec.N, run.wire.FirstErr)
	}
	return run, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

var errNoValgrind = errors.New("valgrind is not installed (Debian: apt-get install -y valgrind)")

// countedRow is one contender's counts per query over the repetitions.
type countedRow struct {
	name  string
	instr []float64 // per query, one per repetition
	wire  wireCount // of the last repetition's longer run
	n     int       // its measured queries
}

// counted is section 7: for each route and contender, reps pairs of child
// processes that differ only in the number of measured queries (lo and
// hi), so that the difference of their instruction totals is the cost of
// hi-lo queries without the start-up (loading, dialing, SCRAM).
func (b *bench) counted(ctx context.Context, r *report) error {
	if _, err := exec.LookPath("valgrind"); err != nil {
		return errNoValgrind
	}
	env := b.env
	lo, hi, reps := 1000, 5000, 5
	if b.o.quick {
		lo, hi, reps = 100, 300, 2
	}
	oneTenant := []string{"stdlib.OpenDB", "tenantpg", "stdlib.OpenDBFromPool", "pgxpool (native)"}
	groups := []struct {
		caption, baseline, url string
		tenants                int
		contenders             []string
	}{
		{"direct, cache_statement, 1 worker", "stdlib.OpenDB",
			withParams(env.DirectURL(env.AppUser, env.AppDatabase), "default_query_exec_mode=cache_statement"), 0, oneTenant},
		{"PgBouncer, exec, 1 worker", "stdlib.OpenDB",
			withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "default_query_exec_mode=exec"), 0, oneTenant},
		{"100 tenants, 1 worker", "map of *sql.DB", env.DirectURL(env.AppUser, env.AppDatabase), 100, []string{"map of *sql.DB", "tenantpg"}},
	}
	r.section("7. Client work per query, counted",
		fmt.Sprintf("Time on this machine cannot resolve a few percent in one run (see the targets and \"What one run can resolve\" below); counts can. "+
			"Each contender runs alone in a process of its own under valgrind's cachegrind (`--cache-sim=no`), which counts the user-space instructions the process executes, "+
			"with one worker: the same query as in sections 1 and 2, after one query per tenant and %d warm ones. "+
			"Two processes differ only in the number of measured queries (%d and %d); the difference of their totals divided by %d is the instructions per query, "+
			"without start-up, dialing and SCRAM. The processes run with `GOMAXPROCS=1` (with more, the runtime's idle threads spin while the worker waits, "+
			"for as long as valgrind's one-thread-at-a-time scheduling lets them: up to 10^9 instructions in one process); garbage collection runs as usual and is counted. "+
			"The counts still differ by a few percent from one process to the next, so each pair runs %d times; the table gives the median and the range, "+
			"and a ratio's range is its lowest and highest over every pairing of the two contenders' repetitions. "+
			"Bytes and socket calls are what the contender's connections sent and received during the measured queries, per query: "+
			"the same numbers mean the same messages, so the same work for the server and the kernel's loopback. "+
			"Counts leave out what instructions cost (cache misses, contention between workers) and the kernel's time: they show the client's work, not its speed.",
			countWarm, lo, hi, hi-lo, reps))
	for _, g := range groups {
		rows := make([]countedRow, len(g.contenders))
		for rep := range reps {
			for i, name := range g.contenders {
				spec := countSpec{Contender: name, URL: g.url, Tenants: g.tenants, Warm: countWarm}
				spec.N = lo
				a, err := runCounted(ctx, spec)
				if err != nil {
					return err
				}
				spec.N = hi
				z, err := runCounted(ctx, spec)
				if err != nil {
					return err
				}
				rows[i].name = name
				rows[i].instr = append(rows[i].instr, (float64(z.instr)-float64(a.instr))/float64(hi-lo))
				rows[i].wire, rows[i].n = z.wire, hi
				fmt.Fprintf(os.Stderr, "counted %s %s rep %d: %.0f instructions/query\n", g.caption, name, rep, rows[i].instr[rep])
			}
		}
		r.countedTable(g.caption, g.baseline, rows)
	}
	return nil
}

// countWarm is the number of warm queries before a counted child measures.
const countWarm = 500

// countedTable prints one route's counts with ratios against baseline.
func (r *report) countedTable(caption, baseline string, rows []countedRow) {
	var base countedRow
	for _, x := range rows {
		if x.name == baseline {
			base = x
		}
	}
	r.printf("**%s**\n\n", caption)
	r.printf("| contender | instructions/query | range | vs %s | range | bytes sent / received | socket writes / reads | dials |\n|---|---|---|---|---|---|---|---|\n", baseline)
	for _, x := range rows {
		c := newCountedRatio(caption, x, base)
		n := float64(x.n)
		r.printf("| %s | %.0f | %.0f-%.0f | %.3fx | %.3f-%.3f | %.1f / %.1f | %.2f / %.2f | %d |\n", x.name, median(x.instr), slices.Min(x.instr), slices.Max(x.instr),
			c.ratio, c.lo, c.hi, float64(x.wire.BytesOut)/n, float64(x.wire.BytesIn)/n, float64(x.wire.Writes)/n, float64(x.wire.Reads)/n, x.wire.Dials)
		if strings.HasPrefix(x.name, "tenantpg") {
			r.counts = append(r.counts, c)
		}
	}
	r.printf("\n")
}

// newCountedRatio is x's instructions per query against base's: the ratio
// of their medians, its lowest and highest over every pairing of x's
// repetitions with base's, and how their messages differ.
func newCountedRatio(caption string, x, base countedRow) countedRatio {
	return countedRatio{caption: caption, name: x.name, baseline: base.name, ratio: median(x.instr) / median(base.instr),
		lo: slices.Min(x.instr) / slices.Max(base.instr), hi: slices.Max(x.instr) / slices.Min(base.instr), wire: wireDiff(x, base)}
}

// wireDiff says how x's socket calls and bytes per query differ from base's.
func wireDiff(x, base countedRow) string {
	per := func(r countedRow, v int64) float64 { return float64(v) / float64(r.n) }
	calls := "the same socket writes and reads per query"
	if dw, dr := per(x, x.wire.Writes)-per(base, base.wire.Writes), per(x, x.wire.Reads)-per(base, base.wire.Reads); math.Abs(dw) >= 0.005 || math.Abs(dr) >= 0.005 {
		calls = fmt.Sprintf("socket writes %+.2f and reads %+.2f per query", dw, dr)
	}
	return fmt.Sprintf("%s, bytes sent %+.1f and received %+.1f", calls,
		per(x, x.wire.BytesOut)-per(base, base.wire.BytesOut), per(x, x.wire.BytesIn)-per(base, base.wire.BytesIn))
}

// countedRatio is tenantpg's instructions per query against a baseline's.
type countedRatio struct {
	caption, name, baseline string
	ratio, lo, hi           float64
	wire                    string // wireDiff
}
