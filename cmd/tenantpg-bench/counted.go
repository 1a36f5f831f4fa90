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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/benchops"
)

// Section 7 counts the client's work per query instead of timing it: the
// user-space instructions of a process that runs one contender
// (valgrind's cachegrind, which counts instructions whatever the
// hypervisor steals), its allocations, and what it sends and receives on
// its connections. Time on this VM cannot resolve a few percent in one run
// (section "Where tenantpg's time goes"). Counts vary by a few percent from
// one process to the next; the machine's load moves them only through
// work done on a clock (tickers, pings of idle connections), of which the
// longer process does more.

// countSpec is one counted child process: a contender with one worker,
// warm queries and then n measured ones.
type countSpec struct {
	Contender string `json:"contender"`
	URL       string `json:"url"`     // the route (login app), with the exec mode for one tenant
	Tenants   int    `json:"tenants"` // 0: one tenant (QueryInt), else that many tenants, a random one per query (CheckSetting)
	Warm      int    `json:"warm"`
	N         int    `json:"n"`
}

// childReport is what a counted child saw during its measured queries:
// the calls and bytes of its connections, its allocations, its wall time
// and its failures.
type childReport struct {
	Writes, Reads     int64 // net.Conn Write and Read calls
	BytesOut, BytesIn int64
	Dials             int64
	Mallocs, AllocB   uint64  // runtime.MemStats Mallocs and TotalAlloc
	Seconds           float64 // wall time of the measured queries
	MeasuredErrs      int
	FirstErr          string
}

// countingConn counts a connection's Read and Write calls and bytes, and
// waits for data before it reads (waitReadable).
type countingConn struct {
	net.Conn
	w    *wireCounters
	wait *readWaiter
}

// wireCounters are the totals of a child's countingConns.
type wireCounters struct {
	writes, reads, out, in, dials atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.wait.waitReadable()
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

// dial is pgconn's default dialer (a zero net.Dialer; these DSNs set no
// connect_timeout) with the connection counted.
func (w *wireCounters) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	w.dials.Add(1)
	return &countingConn{Conn: c, w: w, wait: newReadWaiter(c)}, nil
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

// countChild runs the countSpec it reads as JSON from stdin in this
// process and prints its childReport as JSON. The spec holds a DSN with a
// password, which the command line would show to every user of the
// machine.
func countChild() error {
	var spec countSpec
	if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
		return fmt.Errorf("spec on stdin: %w", err)
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
	var res childReport
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
	// Collect now, where the lo and hi processes are still the same, so
	// that their difference starts from the same heap.
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	w0, r0, o0, i0, d0 := wire.writes.Load(), wire.reads.Load(), wire.out.Load(), wire.in.Load(), wire.dials.Load()
	start := time.Now()
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
	res.Seconds = time.Since(start).Seconds()
	runtime.ReadMemStats(&m1)
	res.Mallocs, res.AllocB = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
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
			return func(t, _ int) error { return benchops.CheckSetting(tenantpg.WithTenant(ctx, ids[t]), db, ids[t]) }, func() { db.Close() }, nil
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
// instructions in all and its report.
type countedRun struct {
	instr uint64
	rep   childReport
}

// childTimeout bounds one counted child, so that a hung one fails the run
// instead of stalling it: a child takes seconds (a whole section 7 of 100
// children about 7 minutes).
const childTimeout = 5 * time.Minute

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
	ctx, cancel := context.WithTimeout(ctx, childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
		self, "-count-child")
	cmd.Stdin = bytes.NewReader(arg)
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
	if err := json.Unmarshal(stdout.Bytes(), &run.rep); err != nil {
		return countedRun{}, fmt.Errorf("%s: child's report: %w", spec.Contender, err)
	}
	if run.rep.MeasuredErrs > 0 {
		return countedRun{}, fmt.Errorf("%s: %d of %d counted queries failed, first: %s", spec.Contender, run.rep.MeasuredErrs, spec.N, run.rep.FirstErr)
	}
	return run, nil
}

// lastLines is the last n lines of s, for error messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// errNoValgrind fails a run that includes section 7 on a machine without
// valgrind, before any section runs.
var errNoValgrind = errors.New("valgrind is not installed (Debian: apt-get install -y valgrind; or leave out section 7 with -only)")

// countedRow is one contender's counts per query over the repetitions.
type countedRow struct {
	name  string
	instr []float64   // per query, one per repetition
	rep   childReport // of the last repetition's longer run
	n     int         // its measured queries
}

// counted is section 7: for each route and contender, reps pairs of child
// processes that differ only in the number of measured queries (lo and
// hi), so that the difference of their instruction totals is the cost of
// hi-lo queries without the start-up (loading, dialing, SCRAM).
func (b *bench) counted(ctx context.Context, r *report) error {
	began := time.Now()
	env := b.env
	lo, hi, reps := 1000, 5000, 5
	if b.o.quick {
		lo, hi, reps = 100, 300, 2
	}
	type group struct {
		caption, baseline, url string
		tenants                int
		contenders             []string
	}
	var groups []group
	for _, rt := range b.oneTenantRoutes() {
		groups = append(groups, group{fmt.Sprintf("%s, %s, 1 worker", rt.name, rt.mode), "stdlib.OpenDB",
			withParams(rt.url, "default_query_exec_mode="+rt.mode), 0,
			[]string{"stdlib.OpenDB", "tenantpg", "stdlib.OpenDBFromPool", "pgxpool (native)"}})
	}
	groups = append(groups, group{"100 tenants, 1 worker", "map of *sql.DB", env.DirectURL(env.AppUser, env.AppDatabase), 100, []string{"map of *sql.DB", "tenantpg"}})
	r.section("7. Client work per query, counted",
		fmt.Sprintf("Time on this machine cannot resolve a few percent in one run (see the targets and \"What one run can resolve\" below); counts can. "+
			"Each contender runs alone in a process of its own under valgrind's cachegrind (`--cache-sim=no`), which counts the user-space instructions the process executes, "+
			"with one worker: tenantpg, `stdlib.OpenDB`, `stdlib.OpenDBFromPool` and pgxpool configured as in section 1, and tenantpg and the map as in section 2, "+
			"running the same queries, after one query per tenant, %d warm ones and a garbage collection. "+
			"Two processes differ only in the number of measured queries (%d and %d); the difference of their totals divided by %d is the instructions per query, "+
			"without start-up, dialing and SCRAM. The processes run with `GOMAXPROCS=1` (with more, the runtime's idle threads spin while the worker waits, "+
			"for as long as valgrind's one-thread-at-a-time scheduling lets them: up to 10^9 instructions in one process); garbage collection runs as usual and is counted. "+
			"Before each read a child waits up to 5 ms in ppoll(2) for the server's answer, holding its thread, so that no contender's goroutine parks on Go's network poller: "+
			"whether the answer was already there when the worker came to read it depends on timing, and the park and wake-up moved counts by thousands of instructions per query. "+
			"The counts still differ by a few percent from one process to the next, so each pair runs %d times; the table gives the median and the range, "+
			"and a ratio's range is its lowest and highest over every pairing of the two contenders' repetitions. "+
			"Work done on a clock rather than per query (tenantpg's reaper tick, pings of connections idle for over a second, the runtime's background work) "+
			"is counted in proportion to a process's wall time, which valgrind stretches: compare the table's queries/s under valgrind with sections 1 and 2. "+
			"The other columns are exact, per measured query, from the longer process: allocations (`runtime.MemStats`; the counting connection allocates none per query), "+
			"and the `net.Conn` writes and reads and the bytes the contender's connections sent and received; "+
			"the same numbers are consistent with the same messages, so the same work for the server and the kernel's loopback. "+
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
				rows[i].rep, rows[i].n = z.rep, hi
				fmt.Fprintf(os.Stderr, "counted %s %s rep %d: %.0f instructions/query\n", g.caption, name, rep, rows[i].instr[rep])
			}
		}
		r.countedTable(g.caption, g.baseline, rows)
	}
	fmt.Fprintf(os.Stderr, "counted: %s\n", time.Since(began).Round(time.Second))
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
	r.printf("| contender | instructions/query | range | vs %s (range) | allocs / bytes allocated | bytes sent / received | conn writes / reads | dials | queries/s under valgrind |\n|---|---|---|---|---|---|---|---|---|\n", baseline)
	for _, x := range rows {
		c := newCountedRatio(caption, x, base)
		vs := "1 (baseline)"
		if x.name != baseline {
			vs = fmt.Sprintf("%.3fx (%.3f-%.3f)", c.ratio, c.lo, c.hi)
		}
		n, w := float64(x.n), x.rep
		r.printf("| %s | %.0f | %.0f-%.0f | %s | %.1f / %.0f | %.1f / %.1f | %.2f / %.2f | %d | %.0f |\n", x.name, median(x.instr), slices.Min(x.instr), slices.Max(x.instr),
			vs, float64(w.Mallocs)/n, float64(w.AllocB)/n, float64(w.BytesOut)/n, float64(w.BytesIn)/n, float64(w.Writes)/n, float64(w.Reads)/n, w.Dials, n/w.Seconds)
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

// wireDiff says how x's connection calls and bytes per query differ from
// base's.
func wireDiff(x, base countedRow) string {
	per := func(r countedRow, v int64) float64 { return float64(v) / float64(r.n) }
	calls := "the same net.Conn writes and reads per query"
	if dw, dr := per(x, x.rep.Writes)-per(base, base.rep.Writes), per(x, x.rep.Reads)-per(base, base.rep.Reads); math.Abs(dw) >= 0.005 || math.Abs(dr) >= 0.005 {
		calls = fmt.Sprintf("net.Conn writes %+.2f and reads %+.2f per query", dw, dr)
	}
	// Rounded first, so that a difference below 0.05 byte prints +0.0, not -0.0.
	tenth := func(v float64) float64 {
		if v = math.Round(v*10) / 10; v == 0 {
			return 0
		}
		return v
	}
	return fmt.Sprintf("%s, bytes sent %+.1f and received %+.1f", calls,
		tenth(per(x, x.rep.BytesOut)-per(base, base.rep.BytesOut)), tenth(per(x, x.rep.BytesIn)-per(base, base.rep.BytesIn)))
}

// countedRatio is tenantpg's instructions per query against a baseline's.
type countedRatio struct {
	caption, name, baseline string
	ratio, lo, hi           float64
	wire                    string // wireDiff
}
