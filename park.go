package tenantpg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// parkMax is how long a connection stays parked. One parked longer goes
// back to pgxpool, which applies pool_max_conn_lifetime, idle time and
// health checks to it; tenantpg's reaper does this every parkMax, and a
// checkout that finds it first does it too.
const parkMax = time.Second

// parked is a connection a handle gave back, kept by its pool entry for
// the next checkout of the same pool. pgxpool counts it as acquired.
type parked struct {
	sc *stdlib.Conn
	at int64 // unix nanoseconds
}

// get returns a connection of e for ctx: the most recently parked one that
// passes its session check, or one acquired from pgxpool.
func (e *poolEntry) get(ctx context.Context) (*stdlib.Conn, error) {
	for {
		e.parkMu.Lock()
		n := len(e.parked)
		if n == 0 {
			// Registered under the lock: park hands connections to pgxpool
			// while someone may be blocked in its Acquire.
			e.acquiring++
			e.parkMu.Unlock()
			dc, err := e.connector.Connect(ctx)
			e.parkMu.Lock()
			e.acquiring--
			e.parkMu.Unlock()
			if err != nil {
				return nil, err
			}
			return dc.(*stdlib.Conn), nil
		}
		p := e.parked[n-1]
		e.parked[n-1] = parked{}
		e.parked = e.parked[:n-1]
		e.parkMu.Unlock()
		// ResetSession runs stdlib's checks (closed, transaction status,
		// a ping after a second idle) and tenantpg's (the ctx tenant routes
		// to e; no budget waiter should get the slot instead).
		if time.Now().UnixNano()-p.at > int64(parkMax) || p.sc.ResetSession(ctx) != nil {
			_ = p.sc.Close() // to pgxpool, which keeps or destroys it
			continue
		}
		return p.sc, nil
	}
}

// park keeps sc for e's next checkout, or gives it back to pgxpool when it
// is not reusable as is, a budget waiter of another pool should get its
// slot, a caller waits in pgxpool for one of e's connections, or e is
// closing.
func (c *Connector) park(e *poolEntry, sc *stdlib.Conn) {
	pc := sc.Conn().PgConn()
	if pc.IsClosed() || pc.IsBusy() || pc.TxStatus() != 'I' || c.closed.Load() || c.budget.shouldYield(e) {
		_ = sc.Close()
		return
	}
	now := time.Now().UnixNano()
	e.parkMu.Lock()
	if e.acquiring > 0 || e.closing {
		e.parkMu.Unlock()
		_ = sc.Close()
		return
	}
	e.parked = append(e.parked, parked{sc: sc, at: now})
	e.parkMu.Unlock()
}

// acquiringNow returns how many checkouts of e are inside pgxpool's Acquire.
func (e *poolEntry) acquiringNow() int {
	e.parkMu.Lock()
	defer e.parkMu.Unlock()
	return e.acquiring
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
		if p.at < cutoff {
			out = append(out, p)
		} else {
			keep = append(keep, p)
		}
	}
	clear(e.parked[len(keep):])
	e.parked = keep
	e.parkMu.Unlock()
	for _, p := range out {
		_ = p.sc.Close()
	}
	return len(out)
}

// closePool stops parking, gives parked connections back and closes the
// pool, waiting for checked-out connections.
func (e *poolEntry) closePool() {
	e.parkMu.Lock()
	e.closing = true
	e.parkMu.Unlock()
	e.unpark(1<<63 - 1)
	e.pool.Close()
}
