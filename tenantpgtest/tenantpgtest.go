// Package tenantpgtest checks, from your own tests, that a *sql.DB opened
// with tenantpg keeps tenants apart: run it in CI against a real server with
// a few of your tenants, and it fails the test if any operation ever sees
// another tenant's session.
//
// You give it a probe, a query whose one-row, one-column answer tells whose
// data a session sees ("select current_user" for a login per tenant,
// "select current_setting('app.tenant_id')" for row-level security, a count
// of foreign rows, ...). AssertIsolation then runs that probe for every
// tenant through every way database/sql hands out connections (autocommit
// queries, transactions with savepoints, *sql.Conn sessions, streaming
// rows, a cancelled query followed by a probe, one *sql.Stmt shared by all
// tenants) from several goroutines in shuffled order, so that
// connections, idle pools and sessions of different tenants interleave, and
// reports every answer that is not the tenant's own. It also checks that a
// context without tenant fails with tenantpg.ErrNoTenant instead of
// reaching anyone's data.
//
//	func TestTenantIsolation(t *testing.T) {
//		db, err := sql.Open("tenantpg", os.Getenv("DATABASE_URL")+"&tenant_user={user}.{tenant}")
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer db.Close()
//		tenantpgtest.AssertIsolation(t, db, []string{"acme", "globex", "initech"}, tenantpgtest.Config{
//			Probe: "select current_user",
//			Want:  func(tenant string) string { return "app." + tenant },
//		})
//	}
//
// The checks need PostgreSQL (savepoints, pg_sleep); they work through
// transaction poolers too.
package tenantpgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
)

// Path is one way database/sql hands a connection to an operation.
type Path string

const (
	// PathQuery runs the probe with db.QueryRowContext.
	PathQuery Path = "query"
	// PathTx runs the probe in a transaction, before and after a savepoint
	// that is rolled back, then rolls the transaction back.
	PathTx Path = "tx"
	// PathConn takes a *sql.Conn, runs the probe on it, then again with
	// another tenant's context: a session belongs to the tenant that opened
	// it, so both answers must be its own.
	PathConn Path = "conn"
	// PathRows runs the probe with db.QueryContext and closes the rows
	// after the first one.
	PathRows Path = "rows"
	// PathCancel cancels a slow query (pg_sleep) mid-way, then runs the
	// probe for the same tenant.
	PathCancel Path = "cancel"
	// PathStmt prepares the probe once and executes that *sql.Stmt for
	// every tenant.
	PathStmt Path = "stmt"
	// PathNoTenant runs the probe with a context that carries no tenant; it
	// must fail with tenantpg.ErrNoTenant. It runs once per check.
	PathNoTenant Path = "no-tenant"
)

// DefaultPaths are the paths a Config without Paths exercises: all of them.
var DefaultPaths = []Path{PathQuery, PathTx, PathConn, PathRows, PathCancel, PathStmt, PathNoTenant}

// Config says how to recognise a tenant's session and how hard to look.
type Config struct {
	// Probe is a query that returns one row with one column (read as a
	// string) identifying whose data the session sees, e.g.
	// "select current_user", "select current_setting('app.tenant_id')",
	// "select current_schema()" or
	// "select coalesce(string_agg(distinct tenant_id, ','), '') from orders".
	// Required.
	Probe string
	// Want returns the answer Probe must give for tenant. When nil, the
	// first answer of each tenant (asked one tenant at a time before the
	// concurrent part) is taken as its identity: no two tenants may share
	// one, and every later answer must equal it. That checks consistency,
	// not correctness: a routing that sends each tenant to another's
	// session every time (two tenants' credentials swapped in Resolve)
	// passes. Give Want to check that each tenant reaches its own.
	Want func(tenant string) string
	// Paths to exercise; nil means DefaultPaths. Check refuses a list
	// without a path that runs a tenant's probe (empty, or PathNoTenant
	// alone) with ErrConfig: it would check nothing.
	Paths []Path
	// Workers is how many goroutines run operations at once (default 8).
	Workers int
	// Rounds is how often each tenant goes through each path (default 3).
	Rounds int
	// Timeout bounds the whole check (default 2 minutes).
	Timeout time.Duration
	// WithTenant puts a tenant into a context; default tenantpg.WithTenant.
	WithTenant func(ctx context.Context, tenant string) context.Context
	// Seed makes the shuffled order reproducible; 0 picks one at random
	// (it is in the Report).
	Seed uint64
}

// Mismatch is an operation that saw a session that was not its tenant's.
type Mismatch struct {
	Tenant string // the tenant whose context ran the operation
	Path   Path
	Got    string // what the probe answered
	Want   string // what it must answer
	Owner  string // the tenant Got belongs to, if it is another tenant's identity
}

func (m Mismatch) String() string {
	s := fmt.Sprintf("tenant %q via %s: probe answered %q, want %q", m.Tenant, m.Path, m.Got, m.Want)
	if m.Owner != "" {
		s += fmt.Sprintf(" (that is tenant %q's)", m.Owner)
	}
	return s
}

// Report is the outcome of a check.
type Report struct {
	Tenants    int
	Ops        int               // operations run
	ByPath     map[Path]int      // operations per path
	Identities map[string]string // tenant -> identity it was checked against
	Mismatches []Mismatch        // sessions of the wrong tenant: isolation is broken
	Errors     []error           // operations that failed (not counting intended cancellations)
	Seed       uint64            // the seed of the shuffled order
	Elapsed    time.Duration     // how long the check took
}

// OK reports whether the check found neither a mismatch nor an error.
func (r *Report) OK() bool { return len(r.Mismatches) == 0 && len(r.Errors) == 0 }

func (r *Report) String() string {
	paths := make([]string, 0, len(r.ByPath))
	for p, n := range r.ByPath {
		paths = append(paths, fmt.Sprintf("%s %d", p, n))
	}
	sort.Strings(paths)
	return fmt.Sprintf("%d operations for %d tenants in %s [%s], seed %d: %d mismatches, %d errors",
		r.Ops, r.Tenants, r.Elapsed.Round(time.Millisecond), strings.Join(paths, ", "), r.Seed, len(r.Mismatches), len(r.Errors))
}

// ErrConfig is returned by Check for a Config or tenant list it cannot use.
var ErrConfig = errors.New("tenantpgtest: invalid configuration")

// AssertIsolation runs Check and reports through t: every mismatch and
// every failed operation is an Errorf, an unusable Config a Fatalf. It
// returns the Report for further assertions or logging.
func AssertIsolation(t testing.TB, db *sql.DB, tenants []string, cfg Config) *Report {
	t.Helper()
	rep, err := Check(context.Background(), db, tenants, cfg)
	if err != nil {
		t.Fatalf("tenantpgtest: %v", err)
		return rep
	}
	for _, m := range rep.Mismatches {
		t.Errorf("tenantpgtest: ISOLATION BROKEN: %s", m)
	}
	for _, e := range rep.Errors {
		t.Errorf("tenantpgtest: %v", e)
	}
	if !rep.OK() {
		t.Errorf("tenantpgtest: %s", rep)
	}
	return rep
}

// Check runs the probe for every tenant through every configured path, from
// Workers goroutines in shuffled order, and returns what it found. The
// error is for an unusable Config, tenant list or context, not for what the
// check found: that is in the Report.
func Check(ctx context.Context, db *sql.DB, tenants []string, cfg Config) (*Report, error) {
	if cfg.Probe == "" {
		return nil, fmt.Errorf("%w: Config.Probe is empty", ErrConfig)
	}
	if len(tenants) < 2 {
		return nil, fmt.Errorf("%w: at least two tenants are needed to tell them apart, got %d", ErrConfig, len(tenants))
	}
	seen := map[string]bool{}
	for _, t := range tenants {
		if seen[t] {
			return nil, fmt.Errorf("%w: tenant %q listed twice", ErrConfig, t)
		}
		seen[t] = true
	}
	paths := cfg.Paths
	if paths == nil {
		paths = DefaultPaths
	}
	tenantPaths := 0
	for _, p := range paths {
		if !slices.Contains([]Path{PathQuery, PathTx, PathConn, PathRows, PathCancel, PathStmt, PathNoTenant}, p) {
			return nil, fmt.Errorf("%w: unknown path %q", ErrConfig, p)
		}
		if p != PathNoTenant {
			tenantPaths++
		}
	}
	if tenantPaths == 0 {
		// An empty list checks nothing and would pass against anything.
		return nil, fmt.Errorf("%w: Config.Paths %v has no path that runs a tenant's probe (nil means DefaultPaths)", ErrConfig, paths)
	}
	workers, rounds, timeout := cfg.Workers, cfg.Rounds, cfg.Timeout
	if workers <= 0 {
		workers = 8
	}
	if rounds <= 0 {
		rounds = 3
	}
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	with := cfg.WithTenant
	if with == nil {
		with = tenantpg.WithTenant
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64() | 1
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c := &checker{db: db, cfg: cfg, with: with, tenants: tenants,
		rep: &Report{Tenants: len(tenants), ByPath: map[Path]int{}, Identities: map[string]string{}, Seed: seed}}
	start := time.Now()
	defer func() { c.rep.Elapsed = time.Since(start) }()

	// The identity of each tenant: given, or its first answer.
	for _, t := range tenants {
		if cfg.Want != nil {
			c.rep.Identities[t] = cfg.Want(t)
			continue
		}
		got, err := c.probe(with(ctx, t), db)
		if err != nil {
			return c.rep, fmt.Errorf("tenantpgtest: first probe of tenant %q: %w", t, err)
		}
		c.rep.Identities[t] = got
	}
	c.owners = map[string][]string{}
	for t, id := range c.rep.Identities {
		c.owners[id] = append(c.owners[id], t)
	}
	for id, ts := range c.owners {
		if len(ts) > 1 {
			sort.Strings(ts)
			for _, t := range ts[1:] {
				c.rep.Mismatches = append(c.rep.Mismatches, Mismatch{Tenant: t, Path: PathQuery, Got: id, Want: "an identity of its own", Owner: ts[0]})
			}
		}
	}

	if slices.Contains(paths, PathStmt) {
		stmt, err := db.PrepareContext(with(ctx, tenants[0]), cfg.Probe)
		if err != nil {
			return c.rep, fmt.Errorf("tenantpgtest: preparing the probe for PathStmt: %w", err)
		}
		defer stmt.Close()
		c.stmt = stmt
	}

	type job struct {
		tenant string
		path   Path
	}
	var jobs []job
	for range rounds {
		for _, t := range tenants {
			for _, p := range paths {
				if p != PathNoTenant {
					jobs = append(jobs, job{t, p})
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	if slices.Contains(paths, PathNoTenant) {
		jobs = append(jobs, job{"", PathNoTenant})
	}

	ch := make(chan job)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wrng := rand.New(rand.NewPCG(seed, uint64(w)))
			for j := range ch {
				c.run(ctx, j.tenant, j.path, wrng)
			}
		}()
	}
	for _, j := range jobs {
		select {
		case ch <- j:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(ch)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return c.rep, fmt.Errorf("tenantpgtest: check did not finish within %s: %w", timeout, err)
	}
	sort.Slice(c.rep.Mismatches, func(i, j int) bool { return c.rep.Mismatches[i].Tenant < c.rep.Mismatches[j].Tenant })
	return c.rep, nil
}

type checker struct {
	db      *sql.DB
	cfg     Config
	with    func(context.Context, string) context.Context
	tenants []string
	stmt    *sql.Stmt
	owners  map[string][]string // identity -> tenants

	mu  sync.Mutex
	rep *Report
}

type querier interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}

func (c *checker) probe(ctx context.Context, q querier) (string, error) {
	var s sql.NullString
	if err := q.QueryRowContext(ctx, c.cfg.Probe).Scan(&s); err != nil {
		return "", err
	}
	return s.String, nil
}

// verify records got for tenant on path.
func (c *checker) verify(tenant string, path Path, got string) {
	want := c.rep.Identities[tenant]
	if got == want {
		return
	}
	m := Mismatch{Tenant: tenant, Path: path, Got: got, Want: want}
	if ts := c.owners[got]; len(ts) > 0 {
		m.Owner = ts[0]
	}
	c.mu.Lock()
	c.rep.Mismatches = append(c.rep.Mismatches, m)
	c.mu.Unlock()
}

func (c *checker) fail(tenant string, path Path, err error) {
	c.mu.Lock()
	c.rep.Errors = append(c.rep.Errors, fmt.Errorf("tenant %q via %s: %w", tenant, path, err))
	c.mu.Unlock()
}

func (c *checker) run(ctx context.Context, tenant string, path Path, rng *rand.Rand) {
	c.mu.Lock()
	c.rep.Ops++
	c.rep.ByPath[path]++
	c.mu.Unlock()
	tctx := c.with(ctx, tenant)
	probeOn := func(p Path, q querier, pctx context.Context) bool {
		got, err := c.probe(pctx, q)
		if err != nil {
			c.fail(tenant, p, err)
			return false
		}
		c.verify(tenant, p, got)
		return true
	}
	switch path {
	case PathQuery:
		probeOn(path, c.db, tctx)
	case PathStmt:
		var s sql.NullString
		if err := c.stmt.QueryRowContext(tctx).Scan(&s); err != nil {
			c.fail(tenant, path, err)
			return
		}
		c.verify(tenant, path, s.String)
	case PathTx:
		tx, err := c.db.BeginTx(tctx, nil)
		if err != nil {
			c.fail(tenant, path, err)
			return
		}
		defer tx.Rollback()
		if !probeOn(path, tx, tctx) {
			return
		}
		for _, q := range []string{"savepoint tenantpgtest", "rollback to savepoint tenantpgtest"} {
			if _, err := tx.ExecContext(tctx, q); err != nil {
				c.fail(tenant, path, fmt.Errorf("%s: %w", q, err))
				return
			}
			if !probeOn(path, tx, tctx) {
				return
			}
		}
		if err := tx.Rollback(); err != nil {
			c.fail(tenant, path, err)
		}
	case PathConn:
		conn, err := c.db.Conn(tctx)
		if err != nil {
			c.fail(tenant, path, err)
			return
		}
		defer conn.Close()
		if !probeOn(path, conn, tctx) {
			return
		}
		other := c.tenants[rng.IntN(len(c.tenants))]
		probeOn(path, conn, c.with(ctx, other))
	case PathRows:
		rows, err := c.db.QueryContext(tctx, c.cfg.Probe)
		if err != nil {
			c.fail(tenant, path, err)
			return
		}
		var s sql.NullString
		if !rows.Next() {
			err := rows.Err()
			rows.Close()
			if err == nil {
				err = errors.New("the probe returned no row")
			}
			c.fail(tenant, path, err)
			return
		}
		err = rows.Scan(&s)
		rows.Close()
		if err != nil {
			c.fail(tenant, path, err)
			return
		}
		c.verify(tenant, path, s.String)
	case PathCancel:
		cctx, cancel := context.WithTimeout(tctx, time.Duration(2+rng.IntN(20))*time.Millisecond)
		// Usually cancelled mid-query; on a loaded machine the cancel
		// request can lose the race with the 200 ms sleep, which is fine:
		// what matters is the identity of the next checkout.
		_, _ = c.db.ExecContext(cctx, "select pg_sleep(0.2)")
		cancel()
		probeOn(path, c.db, tctx)
	case PathNoTenant:
		_, err := c.probe(ctx, c.db)
		if !errors.Is(err, tenantpg.ErrNoTenant) {
			c.fail("", path, fmt.Errorf("a context without tenant must fail with tenantpg.ErrNoTenant, got %v", err))
		}
	}
}
