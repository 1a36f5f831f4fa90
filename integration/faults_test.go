package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// The fault suites run a steady load of identity-checked queries and
// transactions on a PgBouncer route and a direct route at once, inject a
// fault, and measure: the errors while it lasts, the time from its end until
// every operation succeeds again, and afterwards the budget slots not backed
// by a live connection and the goroutines left after Close. Targets:
// recovery within 5 s, no leaked slot, no leaked goroutine, no panic, no
// isolation mismatch, and no tenant negatively cached for an outage.

// recoveryTarget is how soon after a fault ends every operation must
// succeed again.
const recoveryTarget = 5 * time.Second

// faultOpTimeout bounds each operation of the fault load. It is generous
// so that a loaded machine does not fail operations outside the fault.
const faultOpTimeout = 5 * time.Second

// opResult is one operation of the load.
type opResult struct {
	start, end time.Duration // since the load started
	err        error
}

// loadRoute is one *sql.DB under load.
type loadRoute struct {
	spec    routeSpec
	db      *sql.DB
	tenants []string
	workers int

	mu      sync.Mutex
	results []opResult
}

// faultLoad drives loadRoutes until stopped.
type faultLoad struct {
	t      *testing.T
	routes []*loadRoute
	t0     time.Time
	stop   chan struct{}
	wg     sync.WaitGroup
	panics atomic.Int64
}

func startLoad(t *testing.T, routes ...*loadRoute) *faultLoad {
	l := &faultLoad{t: t, routes: routes, t0: time.Now(), stop: make(chan struct{})}
	for _, r := range routes {
		for w := range r.workers {
			l.wg.Add(1)
			go l.worker(r, w)
		}
	}
	return l
}

func (l *faultLoad) now() time.Duration { return time.Since(l.t0) }

func (l *faultLoad) worker(r *loadRoute, w int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		tenant := r.tenants[rng.IntN(len(r.tenants))]
		start := l.now()
		err := l.op(r, tenant, rng)
		res := opResult{start: start, end: l.now(), err: err}
		r.mu.Lock()
		r.results = append(r.results, res)
		r.mu.Unlock()
		if err != nil {
			time.Sleep(5 * time.Millisecond) // no hot loop on a dead server
		}
	}
}

// op is an identity-checked query (4 in 5) or transaction (1 in 5).
func (l *faultLoad) op(r *loadRoute, tenant string, rng *rand.Rand) (err error) {
	defer func() {
		if p := recover(); p != nil {
			l.panics.Add(1)
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	ctx, cancel := context.WithTimeout(tenantpg.WithTenant(context.Background(), tenant), faultOpTimeout)
	defer cancel()
	var s session
	if rng.IntN(5) != 0 {
		if err := s.scan(r.db.QueryRowContext(ctx, identitySQL)); err != nil {
			return err
		}
		return r.spec.check(s, tenant, false)
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "savepoint a"); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "insert into "+r.spec.table(tenant)+" (tenant, val) values ($1, -1)", tenant); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "rollback to savepoint a"); err != nil {
		return err
	}
	if err := s.scan(tx.QueryRowContext(ctx, identitySQL)); err != nil {
		return err
	}
	if err := r.spec.check(s, tenant, false); err != nil {
		return err
	}
	return tx.Commit()
}

// halt stops the load and waits for the workers.
func (l *faultLoad) halt() {
	close(l.stop)
	l.wg.Wait()
}

// snapshot returns a copy of a route's results so far.
func (r *loadRoute) snapshot() []opResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.results)
}

// routeFigures summarises a route's operations around a fault.
type routeFigures struct {
	before, during, after int            // operations
	errBefore, errDuring  int            // failed operations
	errAfter              int            // failures after recovery (must be 0)
	classes               map[string]int // error kinds during the fault
	lastFailStart         time.Duration  // start of the last failed operation, -1 if none
	mismatches            int
	firstErrs             []string
}

// figures splits the results at the fault's start and the recovery time.
func (r *loadRoute) figures(faultStart, recovered time.Duration) routeFigures {
	f := routeFigures{classes: map[string]int{}, lastFailStart: -1}
	for _, res := range r.snapshot() {
		failed := res.err != nil
		if failed {
			if isMismatch(res.err) {
				f.mismatches++
			}
			if len(f.firstErrs) < 3 {
				f.firstErrs = append(f.firstErrs, fmt.Sprintf("at %s: %v", res.start.Round(time.Millisecond), res.err))
			}
			f.lastFailStart = max(f.lastFailStart, res.start)
		}
		switch {
		case res.end < faultStart:
			f.before++
			if failed {
				f.errBefore++
			}
		case res.start <= recovered:
			f.during++
			if failed {
				f.errDuring++
				f.classes[errClass(res.err)]++
			}
		default:
			f.after++
			if failed {
				f.errAfter++
			}
		}
	}
	return f
}

func (f routeFigures) classString() string {
	if len(f.classes) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range f.classes {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// lastFailure returns the start of the last failed operation of any route.
func (l *faultLoad) lastFailure() time.Duration {
	last := time.Duration(-1)
	for _, r := range l.routes {
		for _, res := range r.snapshot() {
			if res.err != nil {
				last = max(last, res.start)
			}
		}
	}
	return last
}

// successesSince counts a route's successful operations started after d.
func (r *loadRoute) successesSince(d time.Duration) int {
	n := 0
	for _, res := range r.snapshot() {
		if res.start > d && res.err == nil {
			n++
		}
	}
	return n
}

// awaitRecovery waits until every route has run at least 20 operations
// and one clean second with no failure since faultEnd and returns when the
// last failure started (or faultEnd). It gives up 10 s after faultEnd.
func (l *faultLoad) awaitRecovery(faultEnd time.Duration) (recovered time.Duration, ok bool) {
	for {
		last := l.lastFailure()
		since := max(last, faultEnd)
		clean := l.now() - since
		enough := true
		for _, r := range l.routes {
			if r.successesSince(since) < 20 {
				enough = false
			}
		}
		if clean >= time.Second && enough {
			return since, true
		}
		if l.now() > faultEnd+recoveryTarget+5*time.Second {
			return since, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// faultCase is one fault: inject returns once the fault is over.
type faultCase struct {
	name string
	// inject causes the fault and ends it; affected names the routes that
	// may fail meanwhile (the others must not).
	inject   func(t *testing.T, env *pgtest.Env) error
	affected []string
	// expectErrors: the fault must cause at least one error on an
	// affected route (otherwise the test did not test anything).
	expectErrors bool
	// expectStall: some operation of an affected route must have taken
	// at least a second (the fault held it), for faults that delay
	// rather than fail.
	expectStall bool
	// noErrors: the fault must cause no error at all, except those
	// tolerated.
	noErrors  bool
	tolerated func(error) bool
}

// runFault runs one fault case against fresh *sql.DBs of env and reports
// the measured figures.
func runFault(t *testing.T, env *pgtest.Env, ids []string, fc faultCase) {
	defer func() {
		if t.Failed() {
			logTail(t, "pgbouncer.log", env.BouncerLogPath(), 30)
			logTail(t, "postgres.log", env.Postgres().LogPath(), 30)
		}
	}()
	goroutines := goroutinesNow()
	// The pooler route keeps database/sql's default of 2 idle handles
	// (sql.Open); the direct one uses OpenDB's. Both have a budget.
	bdb := open(t, routeBouncerUser.dsn(env, "tenant_max_conns=12"))
	cfg, err := tenantpg.ParseConfig(routeDirect.dsn(env, "tenant_max_conns=12"))
	if err != nil {
		t.Fatal(err)
	}
	ddb, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ddb.Close()
	routes := []*loadRoute{
		{spec: routeBouncerUser, db: bdb, tenants: ids, workers: 6},
		{spec: routeDirect, db: ddb, tenants: ids, workers: 6},
	}
	warmUp(t, routes...)
	l := startLoad(t, routes...)
	time.Sleep(1500 * time.Millisecond) // baseline
	faultStart := l.now()
	if err := fc.inject(t, env); err != nil {
		l.halt()
		t.Fatalf("injecting %s: %v", fc.name, err)
	}
	faultEnd := l.now()
	recovered, ok := l.awaitRecovery(faultEnd)
	l.halt()
	recovery := max(recovered-faultEnd, 0)

	var summary []string
	for _, r := range routes {
		f := r.figures(faultStart, recovered)
		affected := slices.Contains(fc.affected, r.spec.name)
		rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
		summary = append(summary, fmt.Sprintf("%s: %d ops before (%.0f/s), %d errors of %d ops during [%s], %d ops after",
			r.spec.name, f.before, rate(f.before, faultStart), f.errDuring, f.during, f.classString(), f.after))
		if f.errBefore != 0 {
			t.Errorf("%s: %d errors before the fault: %v", r.spec.name, f.errBefore, f.firstErrs)
		}
		if f.mismatches != 0 {
			t.Errorf("%s: %d ISOLATION MISMATCHES", r.spec.name, f.mismatches)
		}
		// An unaffected route may see an operation time out on a loaded
		// machine (the restarts take CPU too); any other error is a fault
		// leaking across routes.
		if !affected && f.errDuring-f.classes["timeout"] != 0 {
			t.Errorf("%s: %d errors from a fault that does not concern it: %v", r.spec.name, f.errDuring, f.firstErrs)
		}
		if f.classes["rejected"] != 0 {
			t.Errorf("%s: an outage made tenants negatively cached (%d *RejectedError)", r.spec.name, f.classes["rejected"])
		}
		if st := stats(t, r.db); st.Rejected != 0 {
			t.Errorf("%s: %d tenants in the negative cache after an outage", r.spec.name, st.Rejected)
		}
	}
	if fc.expectStall {
		var longest time.Duration
		for _, r := range routes {
			if slices.Contains(fc.affected, r.spec.name) {
				for _, res := range r.snapshot() {
					if res.start >= faultStart-faultOpTimeout && res.start <= faultEnd {
						longest = max(longest, res.end-res.start)
					}
				}
			}
		}
		t.Logf("%s: longest operation during the fault took %s", fc.name, longest.Round(time.Millisecond))
		if longest < time.Second {
			t.Errorf("%s held no operation for a second (longest %s): the fault was not injected", fc.name, longest)
		}
	}
	if fc.noErrors {
		for _, r := range routes {
			var bad []string
			for _, res := range r.snapshot() {
				if res.err != nil && res.start >= faultStart && res.start <= recovered && (fc.tolerated == nil || !fc.tolerated(res.err)) {
					bad = append(bad, res.err.Error())
				}
			}
			if len(bad) != 0 {
				t.Errorf("%s: %d errors during %s, want none: %v", r.spec.name, len(bad), fc.name, bad[:min(len(bad), 3)])
			}
		}
	}
	if fc.expectErrors {
		n := 0
		for _, r := range routes {
			if slices.Contains(fc.affected, r.spec.name) {
				n += r.figures(faultStart, recovered).errDuring
			}
		}
		if n == 0 {
			t.Errorf("%s caused no error on %v: the fault was not injected", fc.name, fc.affected)
		}
	}
	if !ok {
		t.Errorf("%s: not recovered %s after the fault ended (last failure at %s)", fc.name, recoveryTarget+5*time.Second, (recovered - faultEnd).Round(time.Millisecond))
	} else if recovery > recoveryTarget {
		t.Errorf("%s: recovered %s after the fault ended, target %s", fc.name, recovery, recoveryTarget)
	}
	if p := l.panics.Load(); p != 0 {
		t.Errorf("%d panics", p)
	}
	var leaks []string
	slots := 0
	for _, r := range routes {
		rep := checkSettled(t, env, r.spec, r.db)
		slots += rep.leakedSlots
		leaks = append(leaks, fmt.Sprintf("%s %s", r.spec.name, rep))
	}
	for _, r := range routes {
		checkClosed(t, env, r.spec, r.db)
	}
	leakedG := goroutines.leaked(t)
	t.Logf("FAULT %s: fault lasted %s; recovered %s after it ended; leaked slots %d, leaked goroutines %d\n\t%s\n\t%s",
		fc.name, (faultEnd - faultStart).Round(time.Millisecond), recovery.Round(time.Millisecond), slots, leakedG,
		strings.Join(summary, "\n\t"), strings.Join(leaks, "\n\t"))
}

// warmUp runs one operation per tenant and route, so that the measured
// load does not start with every pool dialing at once.
func warmUp(t *testing.T, routes ...*loadRoute) {
	t.Helper()
	for _, r := range routes {
		for _, id := range r.tenants {
			ctx, cancel := context.WithTimeout(tenantpg.WithTenant(context.Background(), id), 30*time.Second)
			var s session
			err := s.scan(r.db.QueryRowContext(ctx, identitySQL))
			cancel()
			if err == nil {
				err = r.spec.check(s, id, false)
			}
			if err != nil {
				t.Fatalf("warm-up %s %s: %v", r.spec.name, id, err)
			}
		}
	}
}

// logTail logs the last n lines of a server log.
func logTail(t *testing.T, name, path string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(len(lines)-n, 0):], "\n"))
}

// faultTenants returns the tenants of the fault suites' private
// environments.
func faultTenants() []string {
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprintf("f%02d", i+1)
	}
	return ids
}

// TestFaultsPgBouncer kills and restarts PgBouncer, pauses and resumes it,
// and makes it reconnect its server connections, each under load.
func TestFaultsPgBouncer(t *testing.T) {
	ids := faultTenants()
	env := startEnv(t, pgtest.Options{Tenants: ids})
	bouncer := []string{routeBouncerUser.name}
	for _, fc := range []faultCase{
		{
			name: "pgbouncer-restart", affected: bouncer, expectErrors: true,
			inject: func(t *testing.T, env *pgtest.Env) error {
				if err := env.StopBouncer(); err != nil {
					return err
				}
				time.Sleep(time.Second)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				return env.StartBouncer(ctx)
			},
		},
		{
			// Shorter than the operations' timeout: they wait, none fails.
			name: "pgbouncer-pause", affected: bouncer, expectStall: true, noErrors: true,
			inject: func(t *testing.T, env *pgtest.Env) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := env.BouncerAdmin(ctx, "PAUSE"); err != nil {
					return err
				}
				time.Sleep(1500 * time.Millisecond)
				return env.BouncerAdmin(ctx, "RESUME")
			},
		},
		{
			// Longer than the operations' timeout: those waiting fail at
			// their deadline.
			name: "pgbouncer-pause-long", affected: bouncer, expectErrors: true,
			inject: func(t *testing.T, env *pgtest.Env) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := env.BouncerAdmin(ctx, "PAUSE"); err != nil {
					return err
				}
				time.Sleep(faultOpTimeout + time.Second)
				return env.BouncerAdmin(ctx, "RESUME")
			},
		},
		{
			name: "pgbouncer-reconnect", affected: bouncer, noErrors: true,
			// PgBouncer 1.18 counts a server login that RECONNECT cuts short
			// as a failed login, and for server_login_retry fails that
			// pool's queries with 08P01 "server login has been failing"
			// (seen once, on a loaded machine).
			tolerated: func(err error) bool { return strings.Contains(err.Error(), "server login has been failing") },
			inject: func(t *testing.T, env *pgtest.Env) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				return env.BouncerAdmin(ctx, "RECONNECT")
			},
		},
	} {
		t.Run(fc.name, func(t *testing.T) { runFault(t, env, ids, fc) })
	}
}

// TestFaultsPostgres terminates every tenant backend, then restarts
// PostgreSQL, each under load.
func TestFaultsPostgres(t *testing.T) {
	ids := faultTenants()
	env := startEnv(t, pgtest.Options{Tenants: ids})
	both := []string{routeBouncerUser.name, routeDirect.name}
	for _, fc := range []faultCase{
		{
			name: "terminate-backends", affected: both, expectErrors: true,
			inject: func(t *testing.T, env *pgtest.Env) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, env.DirectURL(env.SuperUser, "postgres"))
				if err != nil {
					return err
				}
				defer conn.Close(context.Background())
				var n int
				err = conn.QueryRow(ctx, `select count(pg_terminate_backend(pid)) from pg_stat_activity
					where backend_type = 'client backend' and usename::text like 'app.%'`).Scan(&n)
				t.Logf("terminated %d tenant backends", n)
				if err == nil && n == 0 {
					err = errors.New("no tenant backend to terminate")
				}
				return err
			},
		},
		{
			name: "postgres-restart", affected: both, expectErrors: true,
			inject: func(t *testing.T, env *pgtest.Env) error {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				return env.RestartPostgres(ctx)
			},
		},
	} {
		t.Run(fc.name, func(t *testing.T) { runFault(t, env, ids, fc) })
	}
}

// deadTarget is an address where a tenant's server should be but is not:
// "refused" is a port nobody listens on, "blackhole" a listener that
// accepts connections and never answers, "dial-hangs" a dial that never
// completes (as when a firewall drops the SYN; simulated with a DialFunc,
// since the sandbox network answers every SYN).
type deadTarget struct {
	port     int
	accepted atomic.Int64 // connections the blackhole accepted
	dialing  atomic.Int64 // dials in progress (dial-hangs)
	dials    atomic.Int64 // dials started (dial-hangs)
	close    func()
}

// resolve points pc at the dead target.
func (d *deadTarget) resolve(kind string, pc *pgxpool.Config) {
	pc.ConnConfig.Port = uint16(d.port)
	if kind == "dial-hangs" {
		pc.ConnConfig.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
			d.dials.Add(1)
			d.dialing.Add(1)
			defer d.dialing.Add(-1)
			<-ctx.Done()
			return nil, ctx.Err()
		}
	}
}

func newDeadTarget(t *testing.T, kind string) *deadTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &deadTarget{port: ln.Addr().(*net.TCPAddr).Port}
	if kind != "blackhole" {
		ln.Close() // the port now refuses connections
		d.close = func() {}
		return d
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c) // hold it open, say nothing
			mu.Unlock()
		}
	}()
	d.close = func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	return d
}

// TestFaultUnreachableTenant routes one tenant to a dead address while
// others run: the others keep their throughput and never wait for the
// budget, the dead tenant fails within its context deadline, and its
// connection attempts hold no budget slot once they have failed.
func TestFaultUnreachableTenant(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 8)
	for _, kind := range []string{"refused", "blackhole", "dial-hangs"} {
		t.Run(kind, func(t *testing.T) {
			goroutines := goroutinesNow()
			dead := newDeadTarget(t, kind)
			defer dead.close()
			const budget = 8
			cfg, err := tenantpg.ParseConfig(routeDirect.dsn(env, fmt.Sprint("tenant_max_conns=", budget)))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Resolve = func(_ context.Context, tenant string, pc *pgxpool.Config) error {
				if tenant == "dead" {
					dead.resolve(kind, pc)
				}
				return nil
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			healthy := &loadRoute{spec: routeDirect, db: db, tenants: ids, workers: 8}
			l := startLoad(t, healthy)
			time.Sleep(2 * time.Second)
			// Baseline: the healthy tenants alone, over the last second.
			base := 0
			now := l.now()
			for _, r := range healthy.snapshot() {
				if r.start >= now-time.Second && r.err == nil {
					base++
				}
			}

			// The dead tenant, hammered by 8 callers with a 300 ms
			// deadline each, for 2 s.
			const deadline = 300 * time.Millisecond
			var deadOps, deadLate, deadWrong, deadMax atomic.Int64
			var maxHeld atomic.Int64
			var deadWG sync.WaitGroup
			stopDead := make(chan struct{})
			deadStart := l.now()
			for range 8 {
				deadWG.Add(1)
				go func() {
					defer deadWG.Done()
					for {
						select {
						case <-stopDead:
							return
						default:
						}
						start := time.Now()
						ctx, cancel := context.WithTimeout(tenantpg.WithTenant(context.Background(), "dead"), deadline)
						_, err := db.ExecContext(ctx, "select 1")
						took := time.Since(start)
						cancel()
						deadOps.Add(1)
						for old := deadMax.Load(); int64(took) > old && !deadMax.CompareAndSwap(old, int64(took)); old = deadMax.Load() {
						}
						if err == nil || errors.Is(err, tenantpg.ErrTenantRejected) {
							deadWrong.Add(1)
							t.Errorf("dead tenant: %v, want a connection error", err)
						}
						// A second of slack: on a loaded machine the whole
						// process stalls now and then; what must not happen is
						// waiting for a connect timeout, or for ever.
						if took > deadline+time.Second {
							deadLate.Add(1)
							t.Errorf("dead tenant failed after %s, deadline %s: %v", took, deadline, err)
						}
						if kind == "refused" {
							time.Sleep(time.Millisecond)
						}
					}
				}()
			}
			// Sample the dead tenant's budget use meanwhile.
			sampleDone := make(chan struct{})
			go func() {
				defer close(sampleDone)
				for {
					select {
					case <-stopDead:
						return
					case <-time.After(5 * time.Millisecond):
					}
					if p, ok := stats(t, db).Tenant("dead"); ok {
						if n := int64(p.OpenConns); n > maxHeld.Load() {
							maxHeld.Store(n)
						}
					}
				}
			}()
			time.Sleep(2 * time.Second)
			close(stopDead)
			deadWG.Wait()
			<-sampleDone
			deadEnd := l.now()
			// Once its callers are gone, the dead tenant holds nothing.
			var held, dialing int
			deadlineHeld := time.Now().Add(2 * time.Second)
			for {
				p, _ := stats(t, db).Tenant("dead")
				held, dialing = p.OpenConns, int(dead.dialing.Load())
				if held == 0 && dialing == 0 || time.Now().After(deadlineHeld) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			l.halt()

			during := 0
			healthyErrs := 0
			for _, r := range healthy.snapshot() {
				if r.start >= deadStart && r.end <= deadEnd {
					if r.err == nil {
						during++
					} else {
						healthyErrs++
						t.Errorf("healthy tenant failed while one was unreachable: %v", r.err)
					}
				}
			}
			rate := float64(during) / (deadEnd - deadStart).Seconds()
			ratio := rate / float64(base)
			st := stats(t, db)
			t.Logf("FAULT unreachable-%s: healthy tenants %d ops/s before, %.0f ops/s while the dead tenant was hammered (%.0f%%), %d errors, %d budget waits; "+
				"dead tenant: %d attempts (slowest %s), %d past deadline+1s, %d accepted by the dead port, %d dials, at most %d budget slots held during, %d held and %d dials hanging after its callers left",
				kind, base, rate, 100*ratio, healthyErrs, st.BudgetWaits, deadOps.Load(), time.Duration(deadMax.Load()).Round(time.Millisecond), deadLate.Load(), dead.accepted.Load(), dead.dials.Load(), maxHeld.Load(), held, dialing)
			if ratio < 0.5 {
				t.Errorf("healthy throughput fell to %.0f%% while one tenant was unreachable", 100*ratio)
			}
			if held != 0 || dialing != 0 {
				t.Errorf("the unreachable tenant still holds %d budget slots (%d dials hanging) after its callers gave up", held, dialing)
			}
			// One live attempt at a time (the probe gate), plus at most one
			// abandoned by a caller whose deadline passed and still winding
			// down on a loaded machine; never the whole pool.
			if maxHeld.Load() > 2 {
				t.Errorf("the unreachable tenant held %d budget slots at once; a tenant that never connected gets one attempt at a time (plus one being abandoned)", maxHeld.Load())
			}
			if deadOps.Load() == 0 {
				t.Error("no attempt for the dead tenant")
			}
			checkSettled(t, env, routeDirect, db)
			checkClosed(t, env, routeDirect, db)
			dead.close()
			goroutines.leaked(t)
		})
	}
}

// TestFaultBudgetExhausted fills the budget with slow queries: callers of
// other tenants wait until their deadline and get a *BudgetError, then
// everything works again and nothing leaks.
func TestFaultBudgetExhausted(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 12)
	goroutines := goroutinesNow()
	const budget = 4
	db := open(t, routeDirect.dsn(env, fmt.Sprint("tenant_max_conns=", budget)))
	ctx := context.Background()
	// Four slow queries, one per tenant, take the whole budget.
	var slow sync.WaitGroup
	slowStart := time.Now()
	for _, id := range ids[:budget] {
		slow.Add(1)
		go func() {
			defer slow.Done()
			if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select pg_sleep(2)"); err != nil {
				t.Errorf("slow query of %s: %v", id, err)
			}
		}()
	}
	waitUntil(t, 5*time.Second, func() bool { return stats(t, db).OpenConns == budget })
	// 16 callers of the other tenants and 4 more of the busy ones, each
	// with a 200 ms deadline.
	const deadline = 200 * time.Millisecond
	var waiters sync.WaitGroup
	var typed, late atomic.Int64
	var maxTook atomic.Int64
	var peakWaiting atomic.Int64
	callers := append(slices.Clone(ids[budget:]), ids[budget:]...)
	callers = append(callers, ids[:budget]...)
	for _, id := range callers {
		waiters.Add(1)
		go func() {
			defer waiters.Done()
			start := time.Now()
			wctx, cancel := context.WithTimeout(tenantpg.WithTenant(ctx, id), deadline)
			defer cancel()
			_, err := db.ExecContext(wctx, "select 1")
			took := time.Since(start)
			for old := maxTook.Load(); int64(took) > old && !maxTook.CompareAndSwap(old, int64(took)); old = maxTook.Load() {
			}
			var be *tenantpg.BudgetError
			switch {
			case errors.As(err, &be) && errors.Is(err, tenantpg.ErrBudgetExhausted) && errors.Is(err, context.DeadlineExceeded) &&
				be.Tenant == id && be.Limit == budget:
				typed.Add(1)
			case slices.Contains(ids[:budget], id) && errors.Is(err, context.DeadlineExceeded):
				// A busy tenant's caller may wait in its own pool (pgxpool
				// Acquire) rather than for the budget.
				typed.Add(1)
			default:
				t.Errorf("caller of %s: %v, want a *BudgetError", id, err)
			}
			// A second of slack for a loaded machine; the slowest is reported.
			if took < deadline || took > deadline+time.Second {
				late.Add(1)
				t.Errorf("caller of %s returned after %s, deadline %s", id, took, deadline)
			}
		}()
	}
	waiters.Add(1)
	go func() {
		defer waiters.Done()
		for range 20 {
			if w := int64(stats(t, db).Waiting); w > peakWaiting.Load() {
				peakWaiting.Store(w)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	waiters.Wait()
	midStats := stats(t, db)
	slow.Wait()
	slowTook := time.Since(slowStart)
	// The budget serves everyone again.
	for _, id := range ids {
		if u, err := queryString(tenantpg.WithTenant(ctx, id), db, "select current_user"); err != nil || u != "app."+id {
			t.Errorf("after the slow queries, %s: %q, %v", id, u, err)
		}
	}
	rep := checkSettled(t, env, routeDirect, db)
	st := stats(t, db)
	t.Logf("FAULT budget-exhausted: %d callers, %d typed errors at their deadline (slowest returned after %s, deadline %s), peak %d waiting, "+
		"%d budget errors counted, slow queries took %s; afterwards %s",
		len(callers), typed.Load(), time.Duration(maxTook.Load()).Round(time.Millisecond), deadline, peakWaiting.Load(),
		midStats.BudgetErrors, slowTook.Round(time.Millisecond), rep)
	if typed.Load() != int64(len(callers)) {
		t.Errorf("%d of %d callers got the typed error", typed.Load(), len(callers))
	}
	if midStats.BudgetErrors < int64(len(callers)-budget) {
		t.Errorf("Stats.BudgetErrors = %d, want at least %d", midStats.BudgetErrors, len(callers)-budget)
	}
	if st.PeakConns > budget {
		t.Errorf("peak %d connections, budget %d", st.PeakConns, budget)
	}
	checkClosed(t, env, routeDirect, db)
	goroutines.leaked(t)
}
