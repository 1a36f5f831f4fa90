package tenantpg

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// budget counts physical connections across all tenant pools and, when max
// is set, caps them. A slot is taken when a connection is dialed and given
// back when its socket closes, so every failure path returns it.
//
// The dialer never waits: pgxpool builds connections on a goroutine that
// ignores the caller's context and blocks the caller until it finishes, so
// waiting there would also block a caller whose own pool is about to release
// a connection. Instead a dial that finds the budget full fails at once with
// errBudgetFull, and Connect waits (bounded by the caller's context) for a
// slot or, when its pool already has connections, for one of them to come
// back, then tries again.
type budget struct {
	max int // 0: count only

	mu      sync.Mutex
	used    int
	queue   []*budgetWaiter
	holders map[*poolEntry]struct{} // entries with open connections

	waiting atomic.Int32 // len(queue), readable without mu
	open    atomic.Int64
	peak    atomic.Int64

	dials       atomic.Int64
	waits       atomic.Int64
	waitNanos   atomic.Int64
	timeouts    atomic.Int64
	evictConns  atomic.Int64
	evictPools  atomic.Int64
	closeOnWait atomic.Int64

	// evict frees one connection that is idle in a pool other than self,
	// least recently used first, and reports whether it did.
	evict func(self *poolEntry, starving bool) bool
	// closed is set by Connector.Close; waiters fail with ErrClosed.
	closed chan struct{}
}

// budgetWaiter is a Connect call waiting for a slot for its pool.
type budgetWaiter struct {
	e        *poolEntry
	ch       chan struct{}
	granted  bool // guarded by budget.mu
	starving bool // waited longer than starveAfter in all
}

// rank orders waiters for a freed slot: starving first, then by how few
// connections their pool has.
func (w *budgetWaiter) rank() int64 {
	if w.starving {
		return -1
	}
	return int64(w.e.open.Load())
}

// pollInterval is how often a waiter whose pool has connections of its own
// retries its pool, which may have released one meanwhile; idlePollInterval
// is the same for a waiter whose pool has none, which relies mostly on
// hand-offs.
var (
	pollInterval     = 2 * time.Millisecond
	idlePollInterval = 10 * time.Millisecond
)

// starveAfter is how long a caller may wait before it counts as starving and
// takes priority. A pool's own connections do not always come back soon:
// sessions, transactions and long reads hold them.
const starveAfter = 20 * time.Millisecond

func newBudget(max int) *budget {
	return &budget{max: max, holders: map[*poolEntry]struct{}{}, closed: make(chan struct{})}
}

// errBudgetFull is what a dial returns when no slot is free; Connect waits
// and retries. It matches ErrBudgetExhausted for users of Pool, whose
// Acquire fails with it instead of waiting.
type budgetFullError struct{}

func (budgetFullError) Error() string        { return "tenantpg: connection budget full" }
func (budgetFullError) Is(target error) bool { return target == ErrBudgetExhausted }

var errBudgetFull error = budgetFullError{}

// callState travels in the Acquire context's values to the dialer, which runs
// on pgxpool's constructor goroutine: a slot granted to a waiting Connect is
// reserved there for the next dial of the same call.
type callState struct {
	reserved atomic.Bool
	done     bool     // guarded by budget.mu: the Connect call has returned
	setups   []*setup // guarded by budget.mu: connections set up for the call
}

type callStateKey struct{}

// callCtx is the caller's context plus its callState in one allocation.
type callCtx struct {
	context.Context
	state callState
}

func (c *callCtx) Value(key any) any {
	if key == (callStateKey{}) {
		return &c.state
	}
	return c.Context.Value(key)
}

// takeLocked grabs a free slot. Callers hold b.mu.
func (b *budget) takeLocked(e *poolEntry) bool {
	if b.max > 0 && b.used >= b.max {
		return false
	}
	b.used++
	b.noteOpenLocked(e)
	return true
}

func (b *budget) noteOpenLocked(e *poolEntry) {
	if e.open.Add(1) == 1 {
		b.holders[e] = struct{}{}
	}
	if n := b.open.Add(1); n > b.peak.Load() {
		b.peak.Store(n)
	}
}

// take gets a slot for a new connection of e without waiting: a slot
// reserved for this call, a free one, or one freed by evicting an idle
// connection of another pool. Otherwise it returns errBudgetFull.
func (b *budget) take(st *callState, e *poolEntry) error {
	b.mu.Lock()
	if st != nil && st.reserved.Swap(false) {
		b.noteOpenLocked(e)
		b.mu.Unlock()
		return nil
	}
	ok := len(b.queue) == 0 && b.takeLocked(e)
	b.mu.Unlock()
	if ok {
		return nil
	}
	if b.evict != nil && b.evict(e, false) {
		b.mu.Lock()
		ok = len(b.queue) == 0 && b.takeLocked(e)
		b.mu.Unlock()
		if ok {
			return nil
		}
	}
	return errBudgetFull
}

// wait blocks until a slot is granted for e (it returns true: the slot is
// reserved in st for the caller's next dial), until it is time to retry the
// pool (false), or until ctx ends or the connector closes (a *BudgetError or
// ErrClosed).
func (b *budget) wait(ctx context.Context, st *callState, e *poolEntry, tenant string, waited *time.Duration) (bool, error) {
	w := &budgetWaiter{e: e, ch: make(chan struct{}), starving: *waited >= starveAfter}
	b.mu.Lock()
	if b.used < b.max { // a slot was freed after the dial failed
		b.used++
		st.reserved.Store(true)
		b.mu.Unlock()
		return true, nil
	}
	b.queue = append(b.queue, w)
	b.waiting.Add(1)
	b.mu.Unlock()
	if *waited == 0 {
		b.waits.Add(1)
	}
	start := time.Now()
	defer func() {
		d := time.Since(start)
		*waited += d
		b.waitNanos.Add(int64(d))
	}()

	// Connections that went idle before we queued are not handed over on
	// release; evict one now so that they are.
	if b.evict != nil {
		b.evict(e, w.starving)
	}
	// Poll even without connections of our own: another call for the same
	// tenant may open one that we can share, and conns parked in
	// database/sql's free list come back without a release to hand over.
	interval := pollInterval
	if e.open.Load() == 0 {
		interval = idlePollInterval
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	poll := t.C
	var err error
	select {
	case <-w.ch:
		st.reserved.Store(true)
		return true, nil
	case <-poll:
	case <-ctx.Done():
		err = ctx.Err()
	case <-b.closed:
		err = ErrClosed
	}
	b.mu.Lock()
	if w.granted {
		b.mu.Unlock()
		if err == nil {
			st.reserved.Store(true)
			return true, nil
		}
		b.handOff() // the slot arrived as we gave up: pass it on
	} else {
		b.removeLocked(w)
		b.mu.Unlock()
	}
	if err == nil {
		return false, nil
	}
	if err == ErrClosed {
		return false, err
	}
	b.timeouts.Add(1)
	return false, &BudgetError{Tenant: tenant, Limit: b.max, Waited: *waited + time.Since(start), Err: err}
}

func (b *budget) removeLocked(w *budgetWaiter) {
	for i, q := range b.queue {
		if q == w {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			b.waiting.Add(-1)
			return
		}
	}
}

// release gives back e's slot when one of its connections closes.
func (b *budget) release(e *poolEntry) {
	b.mu.Lock()
	if e.open.Add(-1) == 0 {
		delete(b.holders, e)
	}
	b.open.Add(-1)
	b.mu.Unlock()
	b.handOff()
}

// releaseToCall gives back the slot of a connection that closed before it
// was established (a failed attempt, or the TLS attempt of sslmode=prefer
// before the plain one): it stays reserved for the same Connect call, whose
// next dial would otherwise queue behind everyone else. Once the call has
// returned, the slot is released as usual.
func (b *budget) releaseToCall(e *poolEntry, st *callState) {
	b.mu.Lock()
	if e.open.Add(-1) == 0 {
		delete(b.holders, e)
	}
	b.open.Add(-1)
	if st != nil && !st.done && !st.reserved.Load() {
		st.reserved.Store(true)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.handOff()
}

// handOff gives a freed slot to the waiter that ranks first (starving, then
// fewest connections, then earliest), or frees it.
func (b *budget) handOff() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.used--
		return
	}
	best := 0
	for i, w := range b.queue {
		if w.rank() < b.queue[best].rank() {
			best = i
		}
	}
	w := b.queue[best]
	b.queue = append(b.queue[:best], b.queue[best+1:]...)
	b.waiting.Add(-1)
	w.granted = true
	close(w.ch)
}

// finish ends a Connect call: a reservation it did not use goes back, and
// connections still being set up for it are abandoned (see setup), so that
// an attempt to a server that never answers holds its slot no longer than
// its caller waits.
func (b *budget) finish(st *callState) {
	b.mu.Lock()
	st.done = true
	had := st.reserved.Swap(false)
	setups := st.setups
	st.setups = nil
	b.mu.Unlock()
	for _, s := range setups {
		s.abandon()
	}
	if had {
		b.handOff()
	}
}

// setup is one physical connection being set up for a Connect call.
// pgxpool builds connections on a goroutine that outlives a caller who gave
// up, with no deadline unless connect_timeout is set; against a server that
// accepts and never answers (or a dial that never completes) it would hold
// its budget slot until the pool closes. When the call returns first, the
// setup is abandoned: its dial is cancelled or its socket closed, and the
// slot goes back.
type setup struct {
	mu     sync.Mutex
	state  uint8 // setupDialing, setupOpen, setupSettled, setupAbandoned
	cancel context.CancelFunc
	conn   net.Conn
}

const (
	setupDialing uint8 = iota
	setupOpen
	setupSettled
	setupAbandoned
)

// errAbandoned fails a connection whose Connect call returned before it was
// set up; nobody waits for the error.
var errAbandoned = errors.New("tenantpg: connection attempt abandoned: its caller gave up")

// track registers a setup for the call st and returns the context to dial
// with. It returns a nil setup when there is no call (dials for users of
// Pool) and errAbandoned when the call has already returned.
func (b *budget) track(ctx context.Context, st *callState) (*setup, context.Context, error) {
	if st == nil {
		return nil, ctx, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &setup{cancel: cancel}
	b.mu.Lock()
	gone := st.done
	if !gone {
		st.setups = append(st.setups, s)
	}
	b.mu.Unlock()
	if gone {
		cancel()
		return nil, ctx, errAbandoned
	}
	return s, ctx, nil
}

// opened records the dialed socket and reports false if the setup was
// abandoned during the dial.
func (s *setup) opened(c net.Conn) bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == setupAbandoned {
		return false
	}
	s.state, s.conn = setupOpen, c
	return true
}

// settle ends the setup (the connection is ready, or its dial failed) and
// reports false if it was abandoned first.
func (s *setup) settle() bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == setupAbandoned {
		return false
	}
	s.state = setupSettled
	return true
}

// abandon cancels the dial or closes the socket of an unsettled setup.
func (s *setup) abandon() {
	s.mu.Lock()
	if s.state == setupSettled || s.state == setupAbandoned {
		s.mu.Unlock()
		return
	}
	s.state = setupAbandoned
	c := s.conn
	s.mu.Unlock()
	s.cancel()
	if c != nil {
		c.Close()
	}
}

// shouldYield reports whether a connection of e being released should be
// closed so that its slot goes to a waiter of another pool: one with no
// connection at all, a starving one, or one with at least two fewer than e.
// The margin keeps two busy tenants from trading a connection back and forth.
func (b *budget) shouldYield(e *poolEntry) bool {
	if b.waiting.Load() == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	mine := e.open.Load()
	for _, w := range b.queue {
		if w.e == e {
			continue
		}
		if o := w.e.open.Load(); o == 0 || w.starving || o+1 < mine {
			return true
		}
	}
	return false
}

// full reports whether every slot is taken.
func (b *budget) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.max > 0 && b.used >= b.max
}

// holderList returns the entries that hold connections, except self.
func (b *budget) holderList(self *poolEntry) []*poolEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*poolEntry, 0, len(b.holders))
	for e := range b.holders {
		if e != self {
			out = append(out, e)
		}
	}
	return out
}

// dialer wraps a pool's DialFunc for one physical connection: the first dial
// takes a budget slot, which the socket gives back when it closes. A socket
// closed before the connection is established keeps the slot for the same
// Connect call (see releaseToCall). Dials made while the connection is open
// are cancel requests; they are short-lived and not counted.
func (b *budget) dialer(base pgconn.DialFunc, e *poolEntry, st *callState) pgconn.DialFunc {
	var held atomic.Bool
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if held.Load() {
			return base(ctx, network, addr)
		}
		if err := b.take(st, e); err != nil {
			return nil, err
		}
		b.dials.Add(1)
		e.dials.Add(1)
		s, dctx, err := b.track(ctx, st)
		if err != nil {
			b.releaseToCall(e, st)
			return nil, err
		}
		nc, err := base(dctx, network, addr)
		if s != nil {
			s.cancel() // a connected socket does not depend on the dial context
		}
		if err != nil {
			s.settle()
			b.releaseToCall(e, st)
			return nil, err
		}
		held.Store(true)
		bc := &budgetConn{Conn: nc, setup: s, awaitClose: b.max > 0}
		bc.release = func() {
			held.Store(false)
			if bc.established.Load() {
				b.release(e)
			} else {
				b.releaseToCall(e, st)
			}
		}
		if !s.opened(bc) {
			bc.Close()
			return nil, errAbandoned
		}
		return bc, nil
	}
}

// budgetConn returns its slot once, when closed.
type budgetConn struct {
	net.Conn
	once        sync.Once
	release     func()
	established atomic.Bool // set once the connection passed the startup and checks
	setup       *setup      // nil for dials outside a Connect call
	awaitClose  bool        // wait for the server to end the session before giving the slot back
}

// serverCloseMax bounds how long closing a budgeted connection waits for the
// server's end of it.
const serverCloseMax = 100 * time.Millisecond

func (c *budgetConn) Close() error {
	if c.awaitClose && c.established.Load() {
		c.awaitServerClose()
	}
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// awaitServerClose waits until the server has closed its end of the
// connection, at most serverCloseMax. pgx has sent Terminate; a PostgreSQL
// backend leaves pg_stat_activity before its socket closes, so once this
// returns the session no longer counts on the server and the slot can go to
// a new connection without the server seeing one more than the budget
// (measured: 36 backends for a budget of 32 under churn without it).
func (c *budgetConn) awaitServerClose() {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	if c.Conn.SetReadDeadline(time.Now().Add(serverCloseMax)) != nil {
		return
	}
	var buf [256]byte
	for {
		if _, err := c.Conn.Read(buf[:]); err != nil {
			return
		}
	}
}

// markEstablished flags the budgetConn under a connection (possibly wrapped
// in TLS) as established.
func markEstablished(nc net.Conn) {
	if bc := asBudgetConn(nc); bc != nil {
		bc.established.Store(true)
	}
}

// settleConn ends the setup of the budgetConn under a connection that is
// ready for its pool, and reports false if its Connect call gave up first.
func settleConn(nc net.Conn) bool {
	if bc := asBudgetConn(nc); bc != nil {
		return bc.setup.settle()
	}
	return true
}

func asBudgetConn(nc net.Conn) *budgetConn {
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = t.NetConn()
	}
	bc, _ := nc.(*budgetConn)
	return bc
}
