package tenantpg

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// parkMax is how long a connection stays parked at most. One parked that
// long goes back to pgxpool, which applies pool_max_conn_lifetime, idle
// time and health checks to it; tenantpg's reaper does this on every tick
// (at most parkMax/2 apart) unless its work is still busy with the last
// one, and a checkout that finds it first does it too. Ages come from the
// coarse clock, so a connection goes back after between parkMax minus one
// tick and parkMax, or later when the reaper's work is behind.
const parkMax = time.Second

// holdMax is how long tenantpg keeps one acquisition of a connection from
// pgxpool at most, however busy it stays: a connection parked and claimed
// again every few milliseconds would otherwise never go back, and pgxpool
// applies pool_max_conn_lifetime, Reset and Close to a connection only when
// it is released. A pool whose pool_max_conn_lifetime is shorter gives its
// connections back after that instead (holdFor). Re-acquiring costs one
// pgxpool Acquire, which returns the same connection unless pgxpool
// destroyed it.
const holdMax = 10 * time.Second

// holdFor returns how long a connection of a pool with the given
// pool_max_conn_lifetime may be held from one acquisition (0 or less: no
// lifetime).
func holdFor(lifetime time.Duration) time.Duration {
	if lifetime > 0 && lifetime < holdMax {
		return lifetime
	}
	return holdMax
}

// Cache lines. A checkout and its release touch the handle, the pconn,
// the pool entry and the Connector; each keeps what they read in one cache
// line (layout_test.go checks it). It matters more than instruction counts:
// with more workers than cores, the server's backends run on the same
// cores between a release and the next checkout and evict those lines, and
// every further line is a miss. Gathering the fields this way was worth
// about one point of throughput at 8 workers on 2 cores (docs/benchmarks.md,
// "Where tenantpg's time goes").

// pconn is a connection tenantpg holds from a pool entry's pgxpool, from
// the checkout that acquired it until it is given back: checked out by a
// handle, or parked for the entry's next checkout. It sits in one of the
// entry's slots all that time, so that a checkout claims a parked one with a
// compare-and-swap, and the handle that held it last claims it again
// without looking anything up.
type pconn struct {
	sc    *stdlib.Conn
	e     *poolEntry
	slot  int           // index in e.slots; fixed
	state atomic.Uint32 // pcInUse, pcParked or pcGone
	bare  bool          // no query tracer: a handle may give pgx context.Background() (Conn.pgxCtx)
	at    atomic.Int64  // coarse clock reading of the last park
	uses  atomic.Int64  // checkouts served
	st    *connState    // the connection's (statements.go); its scan plans are this pconn's
	until int64         // coarse clock reading after which park gives it back to pgxpool (holdMax); fixed
}

// pconn states. Only the holder of an in-use connection changes its state
// (to parked or gone); anyone may claim a parked one (parked to in use).
const (
	pcInUse uint32 = iota
	pcParked
	pcGone // given back to pgxpool
)

// claim takes a parked connection and reports whether it did.
func (pc *pconn) claim() bool {
	return pc.state.Load() == pcParked && pc.state.CompareAndSwap(pcParked, pcInUse)
}

// parkWaiter is a checkout waiting for one of its pool's connections while
// tenantpg holds all pool_max_conns of them. A connection given back is
// sent to it directly; nil means "capacity came back to pgxpool: acquire".
type parkWaiter struct {
	ch chan *pconn // buffered: senders never block
}

// The fields of poolEntry for parking:
//
//	slots     []atomic.Pointer[pconn] len pool_max_conns; a slot holds a pconn from its acquisition to its give-back
//	slow      atomic.Int32            > 0 while releases must go through parkMu: waiters, callers in pgxpool's Acquire, closing
//	parkMu    guards the rest
//	waiters   []*parkWaiter FIFO
//	held      int   connections tenantpg acquired from pgxpool and has not given back, plus acquisitions under way
//	acquiring int   checkouts inside pgxpool's Acquire
//	closing   bool  the pool is being closed: park nothing more
//	gone      int64 checkouts served by connections given back (for Stats)
//
// A parked connection is published by storing pcParked, and a checkout
// about to wait or acquire raises slow before it looks at the slots a last
// time; a release that parked reads slow after its store. Go's atomics are
// sequentially consistent, so one of the two sees the other: the checkout
// finds the connection, or the release takes it back and hands it over
// under parkMu.

// get returns a connection of e for ctx: a parked one that passes its
// session check, one given back by another checkout while this one waited
// (when tenantpg holds all of the pool's connections), or one acquired from
// pgxpool.
func (c *Connector) get(ctx context.Context, e *poolEntry) (*pconn, error) {
	woken := false // told that capacity came back to pgxpool
	for {
		if pc := c.claimParked(e); pc != nil {
			e.passOn(woken)
			return pc, nil
		}
		e.parkMu.Lock()
		if e.closing {
			// Connector.Close is closing the pool under its callers; past
			// this point they could hold more connections than it has slots.
			e.passOnLocked(woken)
			e.parkMu.Unlock()
			return nil, ErrClosed
		}
		e.slow.Add(1)
		if pc := e.claimAny(); pc != nil {
			e.slow.Add(-1)
			e.passOnLocked(woken)
			e.parkMu.Unlock()
			if c.usable(pc) {
				return pc, nil
			}
			e.giveBack(pc)
			continue
		}
		if e.held >= e.maxConns {
			pc, err := e.waitLocked(ctx)
			if err != nil || pc != nil {
				return pc, err
			}
			woken = true
			continue // capacity came back to pgxpool
		}
		// Registered under the lock: releases give connections to pgxpool
		// while someone may be blocked in its Acquire (pgx-native users of
		// Pool can hold connections tenantpg does not count).
		e.acquiring++
		e.held++
		e.parkMu.Unlock()
		dc, err := e.connector.Connect(ownAcquire(ctx, e))
		var pc *pconn
		if err == nil {
			sc := dc.(*stdlib.Conn)
			st := stateOf(sc.Conn())
			st.scan = nil // code outside tenantpg may have changed the type map since
			pc = &pconn{sc: sc, e: e, bare: st.bare, st: st, until: c.clock.read() + int64(e.hold)}
		}
		e.parkMu.Lock()
		e.acquiring--
		e.slow.Add(-1)
		if err == nil {
			e.listLocked(pc)
		} else {
			e.held--
			e.wakeLocked()
		}
		e.parkMu.Unlock()
		if err != nil {
			return nil, err
		}
		return pc, nil
	}
}

// passOn hands the capacity a woken waiter did not use (it found a parked
// connection instead) to the next waiter.
func (e *poolEntry) passOn(woken bool) {
	if woken {
		e.parkMu.Lock()
		e.wakeLocked()
		e.parkMu.Unlock()
	}
}

func (e *poolEntry) passOnLocked(woken bool) {
	if woken {
		e.wakeLocked()
	}
}

// claimParked returns a parked connection of e that passes usable, or nil.
// Those that do not go back to pgxpool.
func (c *Connector) claimParked(e *poolEntry) *pconn {
	for {
		pc := e.claimAny()
		if pc == nil || c.usable(pc) {
			return pc
		}
		e.giveBack(pc)
	}
}

// usable reports whether a connection just claimed may serve a checkout:
// it was parked less than parkMax ago (pgxpool pings a connection idle for
// longer before it hands it out) and is not owed to a budget waiter of
// another pool. The checks of park (open, no transaction, not busy) held
// when it was parked and still hold: nobody uses a parked connection, so
// nothing changes its state.
func (c *Connector) usable(pc *pconn) bool {
	return c.clock.read()-pc.at.Load() < int64(parkMax) && !c.shouldYield(pc.e)
}

// shouldYield reports whether a connection of e should go to a budget
// waiter of another pool; without a budget it reads nothing but c.
func (c *Connector) shouldYield(e *poolEntry) bool {
	return c.budgetMax > 0 && c.budget.shouldYield(e)
}

// claimAny claims the parked connection in e's lowest slot, or returns nil.
// Preferring low slots keeps a pool's busy connections few and lets the
// others age out to pgxpool.
func (e *poolEntry) claimAny() *pconn {
	for i := range e.slots {
		if pc := e.slots[i].Load(); pc != nil && pc.claim() {
			return pc
		}
	}
	return nil
}

// listLocked puts a connection just acquired from pgxpool into a free slot.
// held counts every listed connection and is at most pool_max_conns, the
// number of slots, when it is listed.
func (e *poolEntry) listLocked(pc *pconn) {
	for i := range e.slots {
		if e.slots[i].Load() == nil {
			pc.slot = i
			e.slots[i].Store(pc)
			return
		}
	}
	panic("tenantpg: more connections held than pool_max_conns")
}

// waitLocked queues the caller (already counted in slow) for a connection
// of e and unlocks parkMu. It returns a connection handed over, nil to
// retry, or ctx's error.
func (e *poolEntry) waitLocked(ctx context.Context) (*pconn, error) {
	w := &parkWaiter{ch: make(chan *pconn, 1)}
	e.waiters = append(e.waiters, w)
	e.parkMu.Unlock()
	select {
	case pc := <-w.ch:
		return pc, nil
	case <-ctx.Done():
	}
	e.parkMu.Lock()
	if i := slices.Index(e.waiters, w); i >= 0 {
		e.waiters = slices.Delete(e.waiters, i, i+1)
		e.slow.Add(-1)
		e.parkMu.Unlock()
		return nil, ctx.Err()
	}
	e.parkMu.Unlock()
	// Someone sent as we gave up: pass it on.
	if pc := <-w.ch; pc != nil {
		e.handOn(pc)
	} else {
		e.parkMu.Lock()
		e.wakeLocked()
		e.parkMu.Unlock()
	}
	return nil, ctx.Err()
}

// popWaiterLocked removes and returns the first waiter.
func (e *poolEntry) popWaiterLocked() *parkWaiter {
	w := e.waiters[0]
	e.waiters = slices.Delete(e.waiters, 0, 1)
	e.slow.Add(-1)
	return w
}

// wakeLocked tells the first waiter, if any, to acquire from pgxpool:
// tenantpg holds fewer connections of e than it may.
func (e *poolEntry) wakeLocked() {
	if len(e.waiters) == 0 || e.held >= e.maxConns && !e.closing {
		return
	}
	e.popWaiterLocked().ch <- nil
}

// handOn gives a healthy connection its holder is done with to the first
// waiter, or to pgxpool when a caller may be blocked in its Acquire or the
// pool is closing, or else parks it.
func (e *poolEntry) handOn(pc *pconn) {
	e.parkMu.Lock()
	native := e.nativeAcquiring > 0
	if len(e.waiters) > 0 && !native {
		w := e.popWaiterLocked()
		e.parkMu.Unlock()
		w.ch <- pc
		return
	}
	if e.acquiring > 0 || e.closing || native { // giveBack wakes a waiter to acquire
		e.parkMu.Unlock()
		e.giveBack(pc)
		return
	}
	pc.state.Store(pcParked)
	e.parkMu.Unlock()
}

// giveBack returns a connection its caller holds to pgxpool, which keeps or
// destroys it, and lets a waiter acquire in its place.
func (e *poolEntry) giveBack(pc *pconn) {
	// Out of its slot before pgxpool has it: a checkout that gets it from
	// pgxpool next must find a free slot.
	e.parkMu.Lock()
	pc.state.Store(pcGone)
	e.slots[pc.slot].Store(nil)
	e.gone += pc.uses.Load()
	e.parkMu.Unlock()
	pc.st.ownRelease = true
	_ = pc.sc.Close()
	e.parkMu.Lock()
	e.held--
	e.wakeLocked()
	e.parkMu.Unlock()
	// An idle handle may still point at pc (Conn.last); let the connection
	// and the pool go (the scan plans stay with the connection's state
	// until its next pconn starts without). Nobody reads these fields without
	// claiming pc first, and a gone pconn cannot be claimed.
	pc.sc, pc.e, pc.st = nil, nil, nil
}

// park ends a checkout of pc: it gives pc back to pgxpool when pc is not
// reusable as is, the connector is closed, pc was held for holdMax (or the
// pool's shorter lifetime) since pgxpool handed it out, or a budget waiter
// of another pool should get its slot; otherwise it parks pc, without a lock unless a
// checkout of the pool waits or acquires (then handOn decides).
func (c *Connector) park(pc *pconn) {
	e := pc.e
	pg := pc.sc.Conn().PgConn()
	now := c.clock.read()
	if pg.IsClosed() || pg.IsBusy() || pg.TxStatus() != 'I' || c.closed.Load() || now >= pc.until || c.shouldYield(e) {
		e.giveBack(pc)
		return
	}
	e.touch(now)
	if pc.at.Load() != now { // most releases fall in the tick of the last one: skip the locked store
		pc.at.Store(now)
	}
	e.release(pc)
}

// release parks a connection its caller holds, or hands it on when
// releases must go through parkMu.
func (e *poolEntry) release(pc *pconn) {
	if e.slow.Load() == 0 {
		pc.state.Store(pcParked)
		if e.slow.Load() == 0 || !pc.claim() {
			return // parked, or a checkout that was about to wait took it
		}
	}
	e.handOn(pc)
}

// parkedLen returns how many connections e has parked.
func (e *poolEntry) parkedLen() int {
	n := 0
	for i := range e.slots {
		if pc := e.slots[i].Load(); pc != nil && pc.state.Load() == pcParked {
			n++
		}
	}
	return n
}

// checkoutStats returns how many checkouts e's connections served and how
// many checkouts of e are inside pgxpool's Acquire or waiting for a
// connection another checkout gives back, under one lock.
func (e *poolEntry) checkoutStats() (served int64, acquiring int) {
	e.parkMu.Lock()
	defer e.parkMu.Unlock()
	served = e.gone
	for i := range e.slots {
		if pc := e.slots[i].Load(); pc != nil {
			served += pc.uses.Load()
		}
	}
	return served, e.acquiring + len(e.waiters)
}

// unpark gives the connections parked at or before cutoff (a coarse clock
// reading) back to pgxpool and returns how many.
func (e *poolEntry) unpark(cutoff int64) int {
	n := 0
	for i := range e.slots {
		pc := e.slots[i].Load()
		if pc == nil || pc.at.Load() > cutoff || !pc.claim() {
			continue
		}
		if pc.at.Load() > cutoff { // parked again between the two reads
			e.release(pc)
			continue
		}
		e.giveBack(pc)
		n++
	}
	return n
}

// unparkAll gives every parked connection of e back to pgxpool.
func (e *poolEntry) unparkAll() { e.unpark(1<<63 - 1) }

// Native acquires. pgx-native callers of Pool wait in pgxpool's Acquire,
// which tenantpg does not see by itself: on a tenant whose checkouts keep
// every connection busy, releases would go to the tenant's next checkout
// and a native Acquire would wait until a connection reached holdMax. The
// pool's releaseTracer counts native acquires under way; while there is
// one, parked connections go back to pgxpool and so does every release,
// where checkouts and native callers queue together. (No window after:
// parking comes back as soon as no native acquire is under way.)

// ownAcquireKey marks the context of tenantpg's own acquires from pgxpool
// with the pool entry acquiring, so that releaseTracer tells pgx-native
// ones apart: a pool hook that acquires from another tenant's pool with
// the context it was given is a native acquire there.
type ownAcquireKey struct{}

func ownAcquire(ctx context.Context, e *poolEntry) context.Context {
	return context.WithValue(ctx, ownAcquireKey{}, e)
}

// isOwnAcquire reports whether ctx is that of e's own acquire.
func (e *poolEntry) isOwnAcquire(ctx context.Context) bool {
	return ctx.Value(ownAcquireKey{}) == e
}

// nativeAcquire records a pgx-native acquire starting (+1) or ending (-1),
// which also counts as a use of the pool for the reaper. Like closePool,
// the first raises slow before it gives parked connections back, so that
// a release either sees it or parks where unparkAll finds it.
func (e *poolEntry) nativeAcquire(delta int32) {
	e.touch(e.clock.read())
	e.parkMu.Lock()
	e.nativeAcquiring += delta
	switch {
	case delta > 0 && e.nativeAcquiring == 1:
		e.slow.Add(1)
	case delta < 0 && e.nativeAcquiring == 0:
		e.slow.Add(-1)
	}
	e.parkMu.Unlock()
	if delta > 0 {
		e.unparkAll()
	}
}

// closePool stops parking, gives parked connections back, sends waiters to
// pgxpool (which fails them) and closes the pool, waiting for checked-out
// connections.
func (e *poolEntry) closePool() {
	e.parkMu.Lock()
	e.closing = true
	e.slow.Add(1) // for good: every release goes through handOn
	for len(e.waiters) > 0 {
		e.wakeLocked()
	}
	e.parkMu.Unlock()
	e.unparkAll()
	e.pool.Close()
	close(e.closed)
}

// isClosed reports whether closePool has closed e's pool.
func (e *poolEntry) isClosed() bool {
	select {
	case <-e.closed:
		return true
	default:
		return false
	}
}
