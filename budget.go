package tenantpg

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// budget counts physical connections across all tenant pools and, when max
// is set, caps them. A slot is taken when a connection is dialed and given
// back when its socket closes, so every failure path returns it. Slots freed
// while callers wait go to the longest waiter first.
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
	evict func(self *poolEntry) bool
	// closed is set by Connector.Close; waiters fail with ErrClosed.
	closed chan struct{}
}

type budgetWaiter struct {
	ch      chan struct{}
	granted bool // guarded by budget.mu
}

func newBudget(max int) *budget {
	return &budget{max: max, holders: map[*poolEntry]struct{}{}, closed: make(chan struct{})}
}

// callState travels in the Acquire context's values to the dialer, which runs
// on pgxpool's constructor goroutine whose context ignores the caller's
// cancellation. It lets a budget wait end with the caller's context and lets
// Connect tell a budget timeout from other timeouts.
type callState struct {
	caller      context.Context
	waitedNanos atomic.Int64 // > 0 once the dialer waited for a slot
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

// take grabs a free slot without waiting. Callers hold b.mu.
func (b *budget) takeLocked(e *poolEntry) bool {
	if b.max > 0 && (b.used >= b.max || len(b.queue) > 0) {
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

// acquire takes a slot for a new connection of e. When the budget is full it
// first evicts idle connections of other tenants, then waits until a slot is
// freed, ctx or the caller's context ends (a *BudgetError), or the connector
// closes.
func (b *budget) acquire(ctx context.Context, st *callState, e *poolEntry, tenant string) error {
	b.mu.Lock()
	ok := b.takeLocked(e)
	b.mu.Unlock()
	if ok {
		return nil
	}
	if b.evict != nil && b.evict(e) {
		b.mu.Lock()
		ok = b.takeLocked(e)
		b.mu.Unlock()
		if ok {
			return nil
		}
	}
	var callerDone <-chan struct{}
	if st == nil {
		// A background connect (no caller) never waits.
		return &BudgetError{Tenant: tenant, Limit: b.max, Err: context.DeadlineExceeded}
	}
	callerDone = st.caller.Done()

	w := &budgetWaiter{ch: make(chan struct{})}
	b.mu.Lock()
	if b.takeLocked(e) {
		b.mu.Unlock()
		return nil
	}
	b.queue = append(b.queue, w)
	b.waiting.Add(1)
	b.mu.Unlock()
	start := time.Now()
	st.waitedNanos.Store(1)
	b.waits.Add(1)

	// Connections that went idle before we queued are not handed over by
	// the release hook; evict one now so that they are.
	if b.evict != nil {
		b.evict(e)
	}

	var err error
	select {
	case <-w.ch:
	case <-ctx.Done():
		err = ctx.Err()
	case <-callerDone:
		err = st.caller.Err()
	case <-b.closed:
		err = ErrClosed
	}
	waited := time.Since(start)
	st.waitedNanos.Store(int64(waited) | 1)
	b.waitNanos.Add(int64(waited))
	if err == nil {
		b.mu.Lock()
		b.noteOpenLocked(e)
		b.mu.Unlock()
		return nil
	}
	b.mu.Lock()
	if w.granted {
		// The slot arrived as we gave up: pass it on.
		b.mu.Unlock()
		b.handOff()
	} else {
		for i, q := range b.queue {
			if q == w {
				b.queue = append(b.queue[:i], b.queue[i+1:]...)
				b.waiting.Add(-1)
				break
			}
		}
		b.mu.Unlock()
	}
	if err == ErrClosed {
		return err
	}
	b.timeouts.Add(1)
	return &BudgetError{Tenant: tenant, Limit: b.max, Waited: waited, Err: err}
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

// handOff gives a freed slot to the first waiter, or frees it.
func (b *budget) handOff() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) > 0 {
		w := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		b.waiting.Add(-1)
		w.granted = true
		close(w.ch)
		return
	}
	b.used--
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
// (and a retry for a fallback host) takes a budget slot that the socket gives
// back when it closes. Dials made while the connection is open are
// cancel requests; they are short-lived and never wait for the budget.
func (b *budget) dialer(base pgconn.DialFunc, e *poolEntry, st *callState, tenant string) pgconn.DialFunc {
	var held atomic.Bool
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if held.Load() {
			return base(ctx, network, addr)
		}
		if err := b.acquire(ctx, st, e, tenant); err != nil {
			return nil, err
		}
		b.dials.Add(1)
		nc, err := base(ctx, network, addr)
		if err != nil {
			b.release(e)
			return nil, err
		}
		held.Store(true)
		return &budgetConn{Conn: nc, release: func() { held.Store(false); b.release(e) }}, nil
	}
}

// budgetConn returns its slot once, when closed.
type budgetConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *budgetConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
