package tenantpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Connector is a driver.Connector that routes each connection request to
// the pool of the tenant carried by its context. It keeps one pgxpool.Pool
// per distinct tenant target, a global connection budget and a negative cache
// of rejected tenants. Use it with sql.OpenDB, or through OpenDB and
// sql.Open("tenantpg", dsn).
type Connector struct {
	// What every checkout reads, together at the start of the struct so
	// that it costs one cache line (see park.go).
	clock     coarseClock
	closed    atomic.Bool
	budgetMax int // tenant_max_conns; 0: no budget, so no waiter to yield to
	budget    *budget

	settings *settings
	set      *poolSet
	rejects  *rejectCache

	closeOnce sync.Once
	stop      chan struct{}
	reaperWG  sync.WaitGroup
	closers   sync.WaitGroup // pools the reaper is closing

	noTenant   atomic.Int64 // checkouts that ended unbound (Conn.release)
	rejections atomic.Int64 // tenants rejected by the server (not counting cached repeats)
	_          [40]byte     // to a multiple of 64 bytes (layout_test.go)
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// NewConnector validates cfg and returns a Connector. It opens no
// connection. Errors match ErrInvalidConfig. Close it (or the *sql.DB that
// uses it) to close every pool.
func NewConnector(cfg *Config) (*Connector, error) {
	s, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	c := &Connector{
		clock:     coarseClock{start: time.Now()},
		budgetMax: cfg.MaxConns,
		settings:  s,
		budget:    newBudget(cfg.MaxConns),
		rejects:   newRejectCache(s.rejectTTL),
		stop:      make(chan struct{}),
	}
	c.set = newPoolSet(c)
	c.budget.evict = c.set.evictOne
	c.reaperWG.Add(1)
	go c.reaper()
	return c, nil
}

// OpenDB returns a *sql.DB over a new Connector for cfg. It lets
// database/sql keep up to IdleHandles idle handles (see Conn): they hold no
// server connection, so keeping many costs a few hundred bytes each and
// spares checkouts the cost of a new handle. Errors match ErrInvalidConfig.
func OpenDB(cfg *Config) (*sql.DB, error) {
	c, err := NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(IdleHandles)
	return db, nil
}

// IdleHandles is how many idle handles OpenDB lets database/sql keep. A
// *sql.DB from sql.Open keeps database/sql's default of 2; call
// db.SetMaxIdleConns with at least the number of concurrent queries for the
// same speed.
const IdleHandles = 1024

// Connect returns a handle bound to a connection from the pool of the
// tenant in ctx (see Conn). With no tenant in ctx the handle opens nothing
// until an operation whose context has a tenant binds it; until then it
// answers Ping, so that a tenant-less health check does not break, and
// fails every other operation with ErrNoTenant. Invalid tenants fail with
// ErrInvalidTenant before any network I/O; rejected tenants with a
// *RejectedError; a full budget with a *BudgetError; a session that is not
// the tenant's with an *IdentityError; a closed connector (also one closed
// during the connect) with an error matching ErrClosed; an ended ctx with
// its error.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	h := &Conn{c: c}
	if err := h.checkout(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// acquire returns a connection of tenant's pool (a parked one, or one from
// pgxpool, which may dial within the budget) and the pool entry's mapGen as
// of the tenant's lookup.
func (c *Connector) acquire(ctx context.Context, tenant string) (*pconn, uint32, error) {
	e, gen, err := c.set.enterGen(ctx, tenant)
	if err != nil {
		return nil, 0, err
	}
	defer e.inflight.Add(-1)
	var pc *pconn
	if !e.verified.Load() {
		pc, err = c.probeConnect(ctx, tenant, e)
	} else {
		pc, err = c.connect(ctx, tenant, e)
	}
	if err != nil {
		return nil, 0, err
	}
	pc.uses.Add(1)
	return pc, gen, nil
}

// probeConnect lets one connection attempt at a time reach a pool that never
// connected, so that a burst of requests for an unknown tenant dials once
// and the rest fail from the negative cache.
func (c *Connector) probeConnect(ctx context.Context, tenant string, e *poolEntry) (*pconn, error) {
	start := time.Now()
	select {
	case e.probe <- struct{}{}:
	case <-ctx.Done():
		return nil, c.probeWaitError(ctx, tenant, e, start)
	}
	if ctx.Err() != nil {
		<-e.probe
		return nil, c.probeWaitError(ctx, tenant, e, start)
	}
	if e.verified.Load() {
		<-e.probe // another caller's probe succeeded meanwhile
		return c.connect(ctx, tenant, e)
	}
	defer func() { <-e.probe }()
	if err := c.rejects.get(tenant); err != nil {
		return nil, err
	}
	conn, err := c.connect(ctx, tenant, e)
	if err == nil {
		e.verified.Store(true)
	}
	var be *BudgetError
	if errors.As(err, &be) {
		be.Waited = max(be.Waited, time.Since(start)) // waiting for the probe counts
	}
	return conn, err
}

// probeWaitError is the error of a caller whose context ended while it
// waited for another caller's attempt on a pool that never connected: a
// *BudgetError if only the budget held that attempt up (see budgetBlocked),
// like the attempt itself gets, or else the context's error.
func (c *Connector) probeWaitError(ctx context.Context, tenant string, e *poolEntry, start time.Time) error {
	if c.budgetBlocked(e) {
		c.budget.timeouts.Add(1)
		return &BudgetError{Tenant: tenant, Limit: c.budget.max, Waited: time.Since(start), Err: ctx.Err()}
	}
	return ctx.Err()
}

// budgetBlocked reports whether nothing but the budget keeps e from a new
// connection: every slot is taken and none by e, so no dial of e is under
// way that could succeed.
func (c *Connector) budgetBlocked(e *poolEntry) bool {
	return c.budget.max > 0 && e.open.Load() == 0 && c.budget.full()
}

func (c *Connector) connect(ctx context.Context, tenant string, e *poolEntry) (*pconn, error) {
	if c.budget.max == 0 {
		conn, err := c.get(ctx, e)
		if err != nil {
			return nil, c.connectError(ctx, tenant, e, err)
		}
		return conn, nil
	}
	if pc := c.claimParked(e); pc != nil {
		return pc, nil // no dial, no budget bookkeeping
	}
	cc := &callCtx{Context: ctx}
	defer c.budget.finish(&cc.state)
	var waited time.Duration
	for {
		conn, err := c.get(cc, e)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, errBudgetFull) {
			if ctx.Err() != nil && (waited > 0 || c.budgetBlocked(e)) {
				c.budget.timeouts.Add(1)
				c.log(ctx, slog.LevelWarn, "tenantpg: connection budget exhausted", slog.String("tenant", tenant),
					slog.Int("limit", c.budget.max), slog.Duration("waited", waited))
				return nil, &BudgetError{Tenant: tenant, Limit: c.budget.max, Waited: waited, Err: ctx.Err()}
			}
			return nil, c.connectError(ctx, tenant, e, err)
		}
		if waited == 0 {
			c.log(ctx, slog.LevelDebug, "tenantpg: waiting for the connection budget", slog.String("tenant", tenant),
				slog.Int("limit", c.budget.max), slog.Int64("open", c.budget.open.Load()), slog.Int("waiting", int(c.budget.waiting.Load())))
		}
		if _, err := c.budget.wait(ctx, &cc.state, e, tenant, &waited); err != nil {
			if err != ErrClosed {
				c.log(ctx, slog.LevelWarn, "tenantpg: connection budget exhausted", slog.String("tenant", tenant),
					slog.Int("limit", c.budget.max), slog.Duration("waited", waited))
			}
			return nil, err
		}
	}
}

// connectError turns a pool error into tenantpg's typed errors.
func (c *Connector) connectError(ctx context.Context, tenant string, e *poolEntry, err error) error {
	var ie *IdentityError
	if errors.As(err, &ie) {
		c.log(ctx, slog.LevelError, "tenantpg: identity check failed", slog.String("tenant", tenant), slog.String("target", e.target),
			slog.String("field", ie.Field), slog.String("got", ie.Got), slog.String("want", ie.Want))
		return ie
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	if c.closed.Load() {
		// Close cancelled the dial (pgxpool.Close cancels connections being
		// built), or the pool was closed under the caller: either way the
		// reason is Close, not the server.
		return fmt.Errorf("%w (the connect of tenant %q ended with: %v)", ErrClosed, tenant, err)
	}
	if pe, ok := rejection(err); ok {
		e.rejections.Add(1)
		c.rejections.Add(1)
		re := c.set.reject(tenant, e, err)
		c.log(ctx, slog.LevelWarn, "tenantpg: tenant rejected", slog.String("tenant", tenant), slog.String("target", e.target),
			slog.String("code", pe.Code), slog.String("error", err.Error()))
		return re
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && strings.HasPrefix(pe.Message, "unsupported startup parameter") {
		return fmt.Errorf("tenantpg: connect tenant %q: the pooler refuses startup parameters such as search_path "+
			"and settings (tenant_schema, tenant_setting); route through it with tenant_user or tenant_database: %w", tenant, err)
	}
	return fmt.Errorf("tenantpg: connect tenant %q: %w", tenant, err)
}

// instrument installs tenantpg's hooks on a tenant pool's config: the
// budget dialer, the identity check and the release hand-off.
func (c *Connector) instrument(pc *pgxpool.Config, e *poolEntry, tenant string, want identity) {
	userBefore, userAfter := pc.BeforeConnect, pc.AfterConnect
	b := c.budget
	pc.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		if userBefore != nil {
			if err := userBefore(ctx, cc); err != nil {
				return err
			}
		}
		// The pool's tracer is tenantpg's for pgxpool's acquire and release
		// events only: pgxpool reads those from the pool's config, and a
		// connection would call it for every query. Connections keep the
		// user's tracer, if any (also one a BeforeConnect hook set).
		if rt, ok := cc.Tracer.(*releaseTracer); ok {
			cc.Tracer = rt.inner
		}
		// A connection tenantpg can send queries on itself gets
		// namedStatements, which lets it (statements.go).
		if sendsItself(cc) {
			cc.Tracer = namedStatements{}
		}
		st, _ := ctx.Value(callStateKey{}).(*callState)
		cc.DialFunc = b.dialer(cc.DialFunc, e, st)
		return nil
	}
	vs := c.settings.verify
	pc.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		markEstablished(conn.PgConn().Conn())
		if err := checkIdentity(ctx, conn, tenant, want, vs); err != nil {
			return err
		}
		if userAfter != nil {
			if err := userAfter(ctx, conn); err != nil {
				return err
			}
		}
		if !settleConn(conn.PgConn().Conn()) {
			return errAbandoned
		}
		return nil
	}
	// The user's acquire and release hooks run with the connection: what
	// they do to its statements tenantpg cannot see (connState.unsure).
	if f := pc.BeforeAcquire; f != nil {
		pc.BeforeAcquire = func(ctx context.Context, conn *pgx.Conn) bool {
			touched(conn)
			return f(ctx, conn)
		}
	}
	if f := pc.PrepareConn; f != nil {
		pc.PrepareConn = func(ctx context.Context, conn *pgx.Conn) (bool, error) {
			touched(conn)
			return f(ctx, conn)
		}
	}
	if f := pc.AfterRelease; f != nil {
		pc.AfterRelease = func(conn *pgx.Conn) bool {
			touched(conn)
			return f(conn)
		}
	}
	if f := pc.ShouldPing; f != nil {
		pc.ShouldPing = func(ctx context.Context, p pgxpool.ShouldPingParams) bool {
			touched(p.Conn)
			return f(ctx, p)
		}
	}
	// Always: it sees pgx-native acquires (see nativeAcquire), and hands
	// released connections to budget waiters when there is a budget.
	pc.ConnConfig.Tracer = &releaseTracer{inner: pc.ConnConfig.Tracer, b: b, e: e}
}

// reaper advances the coarse clock on every tick and has a goroutine of its
// own give connections parked too long back to pgxpool, close idle pools
// and forget expired rejections. The work is off the ticking goroutine: giving a
// connection back can close it (a budget waiter of another pool gets its
// slot; up to serverCloseMax each), and the clock, which times parking,
// holdMax and idleness, must not stall behind those closes.
func (c *Connector) reaper() {
	defer c.reaperWG.Done()
	every, reapAfter := reapSchedule(c.settings.poolIdle)
	t := time.NewTicker(every)
	defer t.Stop()
	work := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range work {
			select {
			case <-c.stop:
				return // Close: a tick left in the channel is not worth a round
			default:
			}
			if testHookReapWork != nil {
				testHookReapWork()
			}
			now := c.clock.read()
			c.set.unparkStale(now)
			c.set.reap(now, reapAfter)
			c.rejects.purge(c.clock.wall(now))
		}
	}()
	defer func() {
		close(work)
		<-done
	}()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.clock.tick()
			select {
			case work <- struct{}{}:
			default: // the work is behind: it reads the clock when it gets there
			}
		}
	}
}

// testHookReapWork, when set by a test, runs before each round of the
// reaper's work.
var testHookReapWork func()

// reapSchedule returns how often the reaper runs and how long a pool must
// have gone unused by its clock to be reaped (0: never) for tenant_pool_idle
// idle (<= 0: pools live forever).
func reapSchedule(idle time.Duration) (every, reapAfter time.Duration) {
	every = parkMax / 2
	if idle <= 0 {
		return every, 0
	}
	every = min(max(idle/4, 50*time.Millisecond), every)
	// A pool's last use is read from the clock, which lags the truth by up
	// to one tick: a pool is idle for idle once the clock says idle+every.
	return every, idle + every
}

// Driver returns the tenantpg driver bound to this connector; Stats and
// Pool use it to find the connector of a *sql.DB.
func (c *Connector) Driver() driver.Driver { return &Driver{c: c} }

// Close closes every tenant pool, waiting for checked-out connections to be
// returned and for connections being dialed to be abandoned (pgxpool cancels
// them; Close waits up to 2 s for their sockets to close), and
// stops tenantpg's background goroutine. Budget waiters and connects under
// way fail with ErrClosed. It is called by (*sql.DB).Close and always
// returns nil.
func (c *Connector) Close() error {
	c.closeOnce.Do(func() {
		c.set.mu.Lock()
		c.closed.Store(true)
		c.set.mu.Unlock()
		close(c.stop)
		close(c.budget.closed)
		c.reaperWG.Wait()
		c.set.closeAll()
		c.closers.Wait()
		// pgxpool.Close does not wait for connections it is still building:
		// it cancels them and they close on pgxpool's goroutines.
		for deadline := time.Now().Add(closeDialWait); c.budget.open.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	})
	return nil
}

// closeDialWait bounds how long Close waits for cancelled dials to close
// their sockets.
const closeDialWait = 2 * time.Second

// Pool returns the pgxpool.Pool that serves tenant, creating it if needed,
// for pgx-native work (CopyFrom, LISTEN, batches). Connections acquired from
// it count against the budget: when the pool has no idle connection and no
// slot is free or can be freed by closing another pool's idle connection,
// its Acquire fails at once with an error matching ErrBudgetExhausted (it
// does not wait for a slot as database/sql's checkouts do, so it is not a
// *BudgetError). Connections parked for database/sql's next checkout are
// given back to the pool first, so that its idle connections are all there,
// and while a pgx-native Acquire on the pool is under way, connections
// database/sql's checkouts release go back to pgxpool too rather than to
// the tenant's next checkout, so that a native Acquire on a busy tenant
// gets its turn. Native acquires count as use of the pool: it
// is closed when the tenant has been idle for tenant_pool_idle, or by
// Forget, so fetch it per unit of work rather than keeping it. Errors are
// those of Connect's tenant resolution, and ErrClosed after Close.
func (c *Connector) Pool(ctx context.Context, tenant string) (*pgxpool.Pool, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	e, err := c.set.enter(ctx, tenant)
	if err != nil {
		return nil, err
	}
	e.touch(c.clock.read())
	e.unparkAll()
	e.inflight.Add(-1)
	return e.pool, nil
}

// Forget makes the connector forget tenant, for when where or as whom the
// tenant connects has changed (a tenant moved to another server, new
// credentials behind Resolve), or the tenant is gone and its database is
// to be dropped. The tenant's next request resolves it again (templates,
// then Resolve, asked again if it was answering when Forget ran) and so
// connects to wherever Resolve says then; a rejection of the tenant in the
// negative cache is dropped, and a rejection by the old pool that arrives
// later is not cached.
//
// Forget then closes the tenant's pool, unless other tenants share it, and
// waits until it is closed: at once if none of its connections is checked
// out, otherwise after the last one (an open transaction, a *sql.Conn, rows
// being read) is released, within a tick of tenantpg's reaper (at most
// 500 ms). Those keep working until then. If ctx ends first, Forget returns
// ctx's error and the pool is closed when it is unused all the same; a
// later Forget of the tenant waits for it too. Requests for the tenant
// made meanwhile get a new pool if Resolve's answer changed; if it did not,
// they use the old pool again, it stays open, and Forget stops waiting for
// it (within 20 ms) and returns nil; so it does when another tenant that
// shares the pool uses it. So Forget does not stop
// the tenant's traffic: stop sending its requests first if no connection
// may remain (to drop its database, say). Through a pooler, Forget closes
// tenantpg's connections to the pooler, not the pooler's to the server
// (PgBouncer: its admin console's KILL <database> closes those).
//
// It returns nil for a tenant the connector has no pool for, an error
// matching ErrInvalidTenant for an invalid id, and ErrClosed after Close.
func (c *Connector) Forget(ctx context.Context, tenant string) error {
	if err := validateTenant(tenant, c.settings.pattern); err != nil {
		return err
	}
	if c.closed.Load() {
		return ErrClosed
	}
	return c.set.forget(ctx, tenant)
}

// log sends an event to Config.Logger, if any.
func (c *Connector) log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if l := c.settings.cfg.Logger; l != nil {
		l.LogAttrs(ctx, level, msg, attrs...)
	}
}
