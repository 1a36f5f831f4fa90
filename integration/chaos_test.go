package integration

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestChaosIsolation runs a random mix of every kind of database/sql use
// for 200 tenants from 64 workers, on three routes (Supavisor-style login
// through PgBouncer, PgBouncer database alias, direct with login, schema and
// RLS setting) and three database/sql idle-pool settings (sql.Open's default
// of 2 idle handles, SetMaxIdleConns(32), none: a new handle per checkout), and checks after every
// operation that the server-side session is the ctx tenant's. The budget,
// evictions and pool reaping run at the same time.
//
// make test runs a short version; make soak (TENANTPG_SOAK=1) runs 500,000
// operations; TENANTPG_CHAOS_OPS, TENANTPG_CHAOS_TENANTS and
// TENANTPG_CHAOS_WORKERS override the figures.
func TestChaosIsolation(t *testing.T) {
	nTenants := envInt("TENANTPG_CHAOS_TENANTS", 200)
	workers := envInt("TENANTPG_CHAOS_WORKERS", 64)
	total := envInt("TENANTPG_CHAOS_OPS", 4500)
	if soak() {
		total = envInt("TENANTPG_CHAOS_OPS", 500000)
	}
	ids := chaosTenants(nTenants)
	// PostgreSQL allows 300 connections: PgBouncer keeps at most 250
	// server connections per database and per login and drops them between
	// routes (one route runs at a time), so that the direct route's budget
	// of 240 fits.
	// PgBouncer and PostgreSQL trust logins from 127.0.0.1 here: a SCRAM
	// exchange costs ~90 ms of client CPU under the race detector, which
	// would make this test about pgx's SCRAM rather than routing; the
	// other suites keep SCRAM.
	env := startEnv(t, pgtest.Options{Tenants: ids, PoolSize: 4, BouncerSettings: map[string]string{
		"auth_type": "trust", "max_db_connections": "250", "max_user_connections": "250", "server_idle_timeout": "5",
	}})
	trustLogins(t, env)
	goroutines := goroutinesNow()

	routes := []struct {
		r      routeSpec
		budget int // tenant_max_conns, 0: none
	}{{routeBouncerUser, 160}, {routeBouncerDB, 0}, {routeDirect, 240}}
	// Each route's *sql.DB runs three phases: sql.Open's default idle pool
	// (2 connections), a large one (32), none (SetMaxIdleConns(0): a new
	// handle per checkout).
	phases := []int{-1, 32, 0}
	var grand chaosCounts
	start := time.Now()
	for _, rb := range routes {
		t.Run(rb.r.name, func(t *testing.T) {
			dsn := rb.r.dsn(env, "tenant_pool_idle=5s")
			if rb.budget > 0 {
				dsn = withParams(dsn, fmt.Sprint("tenant_max_conns=", rb.budget))
			}
			db, err := sql.Open("tenantpg", dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				st := stats(t, db)
				checkClosed(t, env, rb.r, db)
				t.Logf("%s: %d dials, %d pools created, %d reaped, peak %d conns, %d budget waits, %d evicted conns, %d evicted pools, %d handed off",
					rb.r.name, st.Dials, st.PoolsCreated, st.PoolsReaped, st.PeakConns, st.BudgetWaits, st.EvictedConns, st.EvictedPools, st.HandedOff)
				// What the doc comment says runs alongside did run (the
				// default run reaps 9-26 pools and evicts hundreds of
				// connections per budgeted route; tiny runs may not).
				if total >= 4500 {
					if st.PoolsReaped == 0 {
						t.Errorf("%s: no pool was reaped", rb.r.name)
					}
					if rb.budget > 0 && (st.EvictedConns == 0 || st.PeakConns != rb.budget) {
						t.Errorf("%s: the budget of %d was not exercised: peak %d, %d evictions", rb.r.name, rb.budget, st.PeakConns, st.EvictedConns)
					}
				}
				if rb.r.bouncer {
					// Drop PgBouncer's server connections before the next route.
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := env.BouncerAdmin(ctx, "RECONNECT"); err != nil {
						t.Error(err)
					}
					if n, err := env.WaitServerConnections(ctx, "app", 0); err != nil {
						t.Logf("%d server connections left after RECONNECT: %v", n, err)
					}
				}
			}()
			for _, idle := range phases {
				name := map[int]string{-1: "sql.Open", 0: "no-idle"}[idle]
				if name == "" {
					name = fmt.Sprintf("idle=%d", idle)
				}
				if idle >= 0 {
					db.SetMaxIdleConns(idle)
				}
				ok := t.Run(name, func(t *testing.T) {
					run := &chaosRun{r: rb.r, db: db, ids: ids}
					ops := total / (len(routes) * len(phases))
					elapsed := run.run(t, workers, ops)
					rep := checkSettled(t, env, rb.r, db)
					n := run.counts()
					grand.add(n)
					t.Logf("%d ops in %s (%.0f/s): %s; %s", n.ops, elapsed.Round(time.Millisecond),
						float64(n.ops)/elapsed.Seconds(), n, rep)
					if n.mismatches != 0 || n.errors != 0 || n.panics != 0 {
						t.Errorf("%d isolation mismatches, %d unexpected errors, %d panics", n.mismatches, n.errors, n.panics)
					}
					if n.ops != int64(ops) {
						t.Errorf("ran %d of %d operations", n.ops, ops)
					}
				})
				if !ok {
					return
				}
			}
		})
	}
	t.Logf("chaos total: %d tenants, %d workers, %d ops in %s: %s", nTenants, workers, grand.ops, time.Since(start).Round(time.Millisecond), grand)
	if grand.mismatches != 0 {
		t.Errorf("%d isolation mismatches", grand.mismatches)
	}
	if n := goroutines.leaked(t); n != 0 {
		t.Errorf("%d goroutines leaked", n)
	}
}

// trustLogins makes the private PostgreSQL of env trust local logins.
func trustLogins(t *testing.T, env *pgtest.Env) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := superConn(t, env) // open until the test ends; the leak checks count only the routes' clients
	var hba string
	if err := conn.QueryRow(ctx, "select setting from pg_settings where name = 'hba_file'").Scan(&hba); err != nil {
		t.Fatal(err)
	}
	_, err := conn.Exec(ctx, "copy (select 'local all all trust' union all select 'host all all 127.0.0.1/32 trust') to '"+
		strings.ReplaceAll(hba, "'", "''")+"'")
	if err == nil {
		_, err = conn.Exec(ctx, "select pg_reload_conf()")
	}
	if err != nil {
		t.Fatal(err)
	}
}

// chaosKinds are the operations of the chaos mix, with their weights.
var chaosKinds = [...]struct {
	name   string
	weight int
}{
	{"query", 18},   // autocommit QueryRow
	{"data", 10},    // the tenant's rows only (and RLS on the direct route)
	{"tx", 15},      // transaction with savepoints, an error and rollbacks
	{"session", 15}, // *sql.Conn that SETs things
	{"stmt", 10},    // a *sql.Stmt shared by all tenants
	{"rows", 12},    // rows abandoned half-read
	{"cancel", 15},  // contexts cancelled mid-query
	{"notenant", 3}, // a context without tenant fails closed
	{"forget", 2},   // Connector.Forget of the tenant, then a query for it
}

// chaosCounts sums a run.
type chaosCounts struct {
	ops, mismatches, errors, panics, cancelled int64
	kinds                                      [len(chaosKinds)]int64
	avg                                        [len(chaosKinds)]time.Duration
}

func (c *chaosCounts) add(o chaosCounts) {
	c.ops += o.ops
	c.mismatches += o.mismatches
	c.errors += o.errors
	c.panics += o.panics
	c.cancelled += o.cancelled
	for i := range c.kinds {
		c.kinds[i] += o.kinds[i]
	}
}

func (c chaosCounts) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d mismatches, %d unexpected errors, %d panics, %d cancelled as intended [", c.mismatches, c.errors, c.panics, c.cancelled)
	for i, k := range chaosKinds {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s %d", k.name, c.kinds[i])
		if c.avg[i] > 0 {
			fmt.Fprintf(&b, " (avg %s)", c.avg[i].Round(time.Millisecond))
		}
	}
	b.WriteByte(']')
	return b.String()
}

// chaosRun is one route and idle setting under the chaos mix.
type chaosRun struct {
	r   routeSpec
	db  *sql.DB
	ids []string

	identity, data *sql.Stmt // prepared once, used by every tenant (data: direct route)

	ops, mismatches, errors, panics, cancelled atomic.Int64
	kinds                                      [len(chaosKinds)]atomic.Int64
	nanos                                      [len(chaosKinds)]atomic.Int64
	mu                                         sync.Mutex
	first                                      []string
}

func (c *chaosRun) counts() chaosCounts {
	n := chaosCounts{ops: c.ops.Load(), mismatches: c.mismatches.Load(), errors: c.errors.Load(),
		panics: c.panics.Load(), cancelled: c.cancelled.Load()}
	for i := range n.kinds {
		n.kinds[i] = c.kinds[i].Load()
		if n.kinds[i] > 0 {
			n.avg[i] = time.Duration(c.nanos[i].Load() / n.kinds[i])
		}
	}
	return n
}

func (c *chaosRun) run(t *testing.T, workers, ops int) time.Duration {
	// Generous: a soak phase runs tens of thousands of operations.
	base, cancel := context.WithTimeout(context.Background(), 10*time.Minute+time.Duration(ops)*50*time.Millisecond)
	defer cancel()
	// Statements shared across tenants, on every route (tenantpg's
	// *sql.Stmt keeps nothing on the server, so PgBouncer 1.18 runs them).
	var err error
	pctx := tenantpg.WithTenant(base, c.ids[0])
	if c.identity, err = c.db.PrepareContext(pctx, identitySQL); err != nil {
		t.Fatal(err)
	}
	defer c.identity.Close()
	if !c.r.bouncer { // the bouncer route names each tenant's table (routeSpec.table)
		if c.data, err = c.db.PrepareContext(pctx, "select count(*) filter (where tenant <> $1), count(*) from items"); err != nil {
			t.Fatal(err)
		}
		defer c.data.Close()
	}
	totalWeight := 0
	for _, k := range chaosKinds {
		totalWeight += k.weight
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				i := int(next.Add(1))
				if i > ops {
					return
				}
				tenant := c.ids[rng.IntN(len(c.ids))]
				pick := rng.IntN(totalWeight)
				kind := 0
				for pick >= chaosKinds[kind].weight {
					pick -= chaosKinds[kind].weight
					kind++
				}
				c.do(base, tenant, kind, rng)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, f := range c.first {
		t.Error(f)
	}
	return elapsed
}

// do runs one operation and records its outcome.
func (c *chaosRun) do(base context.Context, tenant string, kind int, rng *rand.Rand) {
	c.ops.Add(1)
	c.kinds[kind].Add(1)
	t0 := time.Now()
	defer func() { c.nanos[kind].Add(int64(time.Since(t0))) }()
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				c.panics.Add(1)
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		ctx := tenantpg.WithTenant(base, tenant)
		switch chaosKinds[kind].name {
		case "query":
			err = c.query(ctx, c.db, tenant, false)
		case "data":
			err = c.dataOp(ctx, tenant)
		case "tx":
			err = c.tx(ctx, tenant, rng)
		case "session":
			err = c.session(ctx, tenant, rng)
		case "stmt":
			var s session
			if err = s.scan(c.identity.QueryRowContext(ctx)); err == nil {
				err = c.r.check(s, tenant, false)
			}
		case "rows":
			err = c.rows(ctx, tenant, rng)
		case "cancel":
			err = c.cancel(ctx, tenant, rng)
		case "notenant":
			_, err = c.db.ExecContext(base, "select 1")
			if errors.Is(err, tenantpg.ErrNoTenant) {
				err = nil
			} else {
				err = fmt.Errorf("tenant-less exec: %v, want ErrNoTenant", err)
			}
		case "forget":
			err = c.forget(ctx, tenant, rng)
		}
	}()
	if err == nil {
		return
	}
	if isMismatch(err) {
		c.mismatches.Add(1)
	} else {
		c.errors.Add(1)
	}
	c.mu.Lock()
	if len(c.first) < 10 {
		c.first = append(c.first, fmt.Sprintf("%s %s: %v", chaosKinds[kind].name, tenant, err))
	}
	c.mu.Unlock()
}

// forget forgets the tenant while other workers use it, waiting 1-50 ms
// for its pool to close (it stays open while in use, and is closed later),
// then checks that the tenant's next query is its own.
func (c *chaosRun) forget(ctx context.Context, tenant string, rng *rand.Rand) error {
	conn, err := tenantpg.ConnectorOf(c.db)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, time.Duration(1+rng.IntN(50))*time.Millisecond)
	err = conn.Forget(fctx, tenant)
	cancel()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("Forget: %w", err)
	}
	return c.query(ctx, c.db, tenant, false)
}

// querier is *sql.DB, *sql.Tx or *sql.Conn.
type querier interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}

func (c *chaosRun) query(ctx context.Context, q querier, tenant string, sticky bool) error {
	var s session
	if err := s.scan(q.QueryRowContext(ctx, identitySQL)); err != nil {
		return err
	}
	return c.r.check(s, tenant, sticky)
}

// dataOp checks that the tenant sees its own rows and no one else's.
func (c *chaosRun) dataOp(ctx context.Context, tenant string) error {
	var foreign, all int
	var row *sql.Row
	if c.data != nil {
		row = c.data.QueryRowContext(ctx, tenant)
	} else {
		row = c.db.QueryRowContext(ctx, "select count(*) filter (where tenant <> $1), count(*) from "+c.r.table(tenant), tenant)
	}
	if err := row.Scan(&foreign, &all); err != nil {
		return err
	}
	if foreign != 0 || all == 0 {
		return &mismatchError{tenant: tenant, what: fmt.Sprintf("items: %d foreign rows of %d", foreign, all)}
	}
	if c.r.setting {
		err := c.db.QueryRowContext(ctx, "select count(*) filter (where tenant_id <> $1), count(*) from public.docs", tenant).Scan(&foreign, &all)
		if err != nil {
			return err
		}
		if foreign != 0 || all == 0 {
			return &mismatchError{tenant: tenant, what: fmt.Sprintf("RLS docs: %d foreign rows of %d", foreign, all)}
		}
	}
	return nil
}

// tx runs a transaction with savepoints, a failing statement rolled back to
// its savepoint, a write rolled back, and a random commit or rollback.
func (c *chaosRun) tx(ctx context.Context, tenant string, rng *rand.Rand) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := c.query(ctx, tx, tenant, false); err != nil {
		return err
	}
	table := c.r.table(tenant)
	steps := []string{
		"savepoint s1",
		"insert into " + table + " (tenant, val) values ($1, -1)",
		"savepoint s2",
	}
	for _, s := range steps {
		var args []any
		if strings.Contains(s, "$1") {
			args = []any{tenant}
		}
		if _, err := tx.ExecContext(ctx, s, args...); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	var pe *pgconn.PgError
	if _, err := tx.ExecContext(ctx, "select 1/0"); !errors.As(err, &pe) || pe.Code != "22012" {
		return fmt.Errorf("division by zero in a savepoint: %v", err)
	}
	if _, err := tx.ExecContext(ctx, "rollback to savepoint s2"); err != nil {
		return err
	}
	var foreign, mine int
	if err := tx.QueryRowContext(ctx, "select count(*) filter (where tenant <> $1), count(*) filter (where val < 0) from "+table, tenant).Scan(&foreign, &mine); err != nil {
		return err
	}
	if foreign != 0 || mine == 0 {
		return &mismatchError{tenant: tenant, what: fmt.Sprintf("in tx: %d foreign rows, %d own uncommitted", foreign, mine)}
	}
	if _, err := tx.ExecContext(ctx, "rollback to savepoint s1"); err != nil {
		return err
	}
	if err := c.query(ctx, tx, tenant, false); err != nil {
		return err
	}
	if rng.IntN(2) == 0 {
		return tx.Commit()
	}
	return tx.Rollback()
}

// session takes a *sql.Conn, SETs session state and checks it.
func (c *chaosRun) session(ctx context.Context, tenant string, rng *rand.Rand) error {
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "select set_config('app.marker', $1, false)", tenant); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, "set work_mem = '8MB'"); err != nil {
		return err
	}
	// On a direct route the session keeps what it SET; through a
	// transaction pooler the next statement may run on another server
	// connection, of the same tenant.
	sticky := !c.r.bouncer
	if err := c.query(ctx, conn, tenant, sticky); err != nil {
		return err
	}
	if rng.IntN(2) == 0 {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		err = c.query(ctx, tx, tenant, sticky)
		if err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	// A statement with another tenant's context still runs on this
	// session: the *sql.Conn belongs to the tenant that opened it.
	other := c.ids[rng.IntN(len(c.ids))]
	if err := c.query(tenantpg.WithTenant(ctx, other), conn, tenant, sticky); err != nil {
		return err
	}
	if rng.IntN(3) == 0 {
		_, err = conn.ExecContext(ctx, "reset all")
	}
	return err
}

// rows reads a few rows of a long result and abandons the rest, by closing
// the rows or by cancelling their context.
func (c *chaosRun) rows(ctx context.Context, tenant string, rng *rand.Rand) error {
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := c.db.QueryContext(qctx, "select s.*, g from ("+identitySQL+") s, generate_series(1, 2000) g")
	if err != nil {
		return err
	}
	defer rows.Close()
	want := 1 + rng.IntN(20)
	for i := 0; i < want; i++ {
		if !rows.Next() {
			return fmt.Errorf("rows ended after %d: %v", i, rows.Err())
		}
		var s session
		var g int
		if err := rows.Scan(&s.user, &s.database, &s.searchPath, &s.setting, &s.marker, &g); err != nil {
			return err
		}
		if err := c.r.check(s, tenant, false); err != nil {
			return err
		}
	}
	if rng.IntN(2) == 0 {
		cancel()
	}
	rows.Close()
	// The connection goes back in whatever state that left it; the next
	// use must still be the tenant's.
	return c.query(ctx, c.db, tenant, false)
}

// cancel runs something slow under a context that ends mid-query, then
// checks that the tenant's next operation is fine.
func (c *chaosRun) cancel(ctx context.Context, tenant string, rng *rand.Rand) error {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(1+rng.IntN(10))*time.Millisecond)
	defer cancel()
	var err error
	switch rng.IntN(3) {
	case 0:
		_, err = c.db.ExecContext(cctx, "select pg_sleep(0.05)")
	case 1:
		var tx *sql.Tx
		if tx, err = c.db.BeginTx(cctx, nil); err == nil {
			if _, err = tx.ExecContext(cctx, "savepoint s"); err == nil {
				_, err = tx.ExecContext(cctx, "select pg_sleep(0.05)")
			}
			tx.Rollback()
		}
	case 2:
		var rows *sql.Rows
		if rows, err = c.db.QueryContext(cctx, "select g from generate_series(1, 10000000) g"); err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			rows.Close()
		}
	}
	switch cls := errClass(err); {
	case err == nil:
	case cls == "timeout", cls == "server 57014", cls == "budget", errors.Is(err, sql.ErrTxDone):
		c.cancelled.Add(1)
	case errors.Is(err, driver.ErrBadConn) && cctx.Err() != nil:
		// A deadline that passes after database/sql has checked the
		// context but before pgx sends the query makes pgx's stdlib answer
		// driver.ErrBadConn (the query was never sent, so it is safe to
		// retry); on its last retry database/sql returns that to the
		// caller. Seen once in 500,000 operations.
		c.cancelled.Add(1)
	default:
		return fmt.Errorf("cancelled query: unexpected error (%s): %w", cls, err)
	}
	return c.query(ctx, c.db, tenant, false)
}
