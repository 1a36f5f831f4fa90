package tenantpg

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// parkMax is how long a connection stays parked at most. One parked that
// long goes back to pgxpool, which applies pool_max_conn_lifetime, idle
// time and health checks to it; tenantpg's reaper does this on every tick
// (at most parkMax/2 apart), and a checkout that finds it first does it
// too. Ages come from the coarse clock, so a connection goes back after
// between parkMax minus one tick and parkMax.
const parkMax = time.Second

// parked is a connection a handle gave back, kept by its pool entry for
// the next checkout of the same pool. pgxpool counts it as acquired.
type parked struct {
	sc *stdlib.Conn
	at int64 // coarseClock reading
}

// parkWaiter is a checkout waiting for one of its pool's connections while
// tenantpg holds all pool_max_conns of them. A connection given back is
// sent to it directly; nil means "capacity came back to pgxpool: acquire".
type parkWaiter struct {
	ch chan *stdlib.Conn // buffered: senders never block
}

// The fields of poolEntry guarded by parkMu:
//
//	parked    []parked      LIFO
//	waiters   []*parkWaiter FIFO
//	held      int           connections tenantpg acquired from pgxpool and has not given back (checked out or parked)
//	acquiring int           checkouts inside pgxpool's Acquire
//	closing   bool          the pool is being closed: park nothing more

// get returns a connection of e for ctx: the most recently parked one that
// passes its session check, one given back by another checkout while this
// one waited (when tenantpg holds all of the pool's connections), or one
// acquired from pgxpool.
func (c *Connector) get(ctx context.Context, e *poolEntry) (*stdlib.Conn, error) {
	for {
		if sc := c.popParked(e); sc != nil {
			return sc, nil
		}
		e.parkMu.Lock()
		if len(e.parked) > 0 {
			e.parkMu.Unlock()
			continue // parked meanwhile
		}
		if e.held >= e.maxConns && !e.closing {
			sc, err := e.waitLocked(ctx)
			if err != nil || sc != nil {
				return sc, err
			}
			continue // capacity came back to pgxpool
		}
		// Registered under the lock: park gives connections to pgxpool
		// while someone may be blocked in its Acquire (pgx-native users of
		// Pool can hold connections tenantpg does not count).
		e.acquiring++
		e.held++
		e.parkMu.Unlock()
		dc, err := e.connector.Connect(ctx)
		e.parkMu.Lock()
		e.acquiring--
		if err != nil {
			e.held--
			e.wakeLocked()
		}
		e.parkMu.Unlock()
		if err != nil {
			return nil, err
		}
		return dc.(*stdlib.Conn), nil
	}
}

// popParked returns the most recently parked connection of e that is still
// open and not owed to a budget waiter of another pool, or nil. Others go
// back to pgxpool. The checks of park (no transaction, not busy) held when
// it was parked, less than parkMax ago; pgxpool pings a connection idle for
// longer before it hands it out.
func (c *Connector) popParked(e *poolEntry) *stdlib.Conn {
	for {
		e.parkMu.Lock()
		n := len(e.parked)
		if n == 0 {
			e.parkMu.Unlock()
			return nil
		}
		p := e.parked[n-1]
		e.parked[n-1] = parked{}
		e.parked = e.parked[:n-1]
		e.parkMu.Unlock()
		if c.clock.read()-p.at >= int64(parkMax) || p.sc.Conn().IsClosed() || c.budget.shouldYield(e) {
			e.giveBack(p.sc)
			continue
		}
		return p.sc
	}
}

// waitLocked queues the caller for a connection of e and unlocks parkMu. It
// returns a connection handed over, nil to retry, or ctx's error.
func (e *poolEntry) waitLocked(ctx context.Context) (*stdlib.Conn, error) {
	w := &parkWaiter{ch: make(chan *stdlib.Conn, 1)}
	e.waiters = append(e.waiters, w)
	e.parkMu.Unlock()
	select {
	case sc := <-w.ch:
		return sc, nil
	case <-ctx.Done():
	}
	e.parkMu.Lock()
	if i := slices.Index(e.waiters, w); i >= 0 {
		e.waiters = slices.Delete(e.waiters, i, i+1)
		e.parkMu.Unlock()
		return nil, ctx.Err()
	}
	e.parkMu.Unlock()
	// Someone sent as we gave up: pass it on.
	if sc := <-w.ch; sc != nil {
		e.handOn(sc, e.clock.read())
	} else {
		e.parkMu.Lock()
		e.wakeLocked()
		e.parkMu.Unlock()
	}
	return nil, ctx.Err()
}

// wakeLocked tells the first waiter, if any, to acquire from pgxpool:
// tenantpg holds fewer connections of e than it may.
func (e *poolEntry) wakeLocked() {
	if len(e.waiters) == 0 || e.held >= e.maxConns && !e.closing {
		return
	}
	w := e.waiters[0]
	e.waiters = slices.Delete(e.waiters, 0, 1)
	w.ch <- nil
}

// handOn gives a healthy connection to the first waiter, or parks it.
func (e *poolEntry) handOn(sc *stdlib.Conn, now int64) {
	e.parkMu.Lock()
	if len(e.waiters) > 0 {
		w := e.waiters[0]
		e.waiters = slices.Delete(e.waiters, 0, 1)
		e.parkMu.Unlock()
		w.ch <- sc
		return
	}
	if e.acquiring > 0 || e.closing {
		e.parkMu.Unlock()
		e.giveBack(sc)
		return
	}
	e.parked = append(e.parked, parked{sc: sc, at: now})
	e.parkMu.Unlock()
}

// giveBack returns sc to pgxpool, which keeps or destroys it, and lets a
// waiter acquire in its place.
func (e *poolEntry) giveBack(sc *stdlib.Conn) {
	_ = sc.Close()
	e.parkMu.Lock()
	e.held--
	e.wakeLocked()
	e.parkMu.Unlock()
}

// park hands sc to a checkout of e that waits for one, keeps it for e's
// next checkout, or gives it back to pgxpool when it is not reusable as is,
// a budget waiter of another pool should get its slot, a caller waits in
// pgxpool for one of e's connections, or e is closing.
func (c *Connector) park(e *poolEntry, sc *stdlib.Conn) {
	pc := sc.Conn().PgConn()
	if pc.IsClosed() || pc.IsBusy() || pc.TxStatus() != 'I' || c.closed.Load() || c.budget.shouldYield(e) {
		e.giveBack(sc)
		return
	}
	now := c.clock.read()
	e.touch(now)
	e.handOn(sc, now)
}

// acquiringNow returns how many checkouts of e are inside pgxpool's Acquire
// or waiting for a connection another checkout gives back.
func (e *poolEntry) acquiringNow() int {
	e.parkMu.Lock()
	defer e.parkMu.Unlock()
	return e.acquiring + len(e.waiters)
}

// parkedLen returns how many connections e has parked.
func (e *poolEntry) parkedLen() int {
	e.parkMu.Lock()
	defer e.parkMu.Unlock()
	return len(e.parked)
}

// unpark gives the connections parked before cutoff (unix nanoseconds) back
// to pgxpool and returns how many.
func (e *poolEntry) unpark(cutoff int64) int {
	e.parkMu.Lock()
	var out []parked
	keep := e.parked[:0]
	for _, p := range e.parked {
		if p.at <= cutoff {
			out = append(out, p)
		} else {
			keep = append(keep, p)
		}
	}
	clear(e.parked[len(keep):])
	e.parked = keep
	e.parkMu.Unlock()
	for _, p := range out {
		e.giveBack(p.sc)
	}
	return len(out)
}

// unparkAll gives every parked connection of e back to pgxpool.
func (e *poolEntry) unparkAll() { e.unpark(1<<63 - 1) }

// closePool stops parking, gives parked connections back, sends waiters to
// pgxpool (which fails them) and closes the pool, waiting for checked-out
// connections.
func (e *poolEntry) closePool() {
	e.parkMu.Lock()
	e.closing = true
	for len(e.waiters) > 0 {
		e.wakeLocked()
	}
	e.parkMu.Unlock()
	e.unparkAll()
	e.pool.Close()
}
