package tenantpg

import (
	"cmp"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// poolEntry is one pgxpool.Pool and the tenants routed to it.
type poolEntry struct {
	// What every checkout and release reads, in the first cache line
	// (layout_test.go checks it).
	slots []atomic.Pointer[pconn] // parking; see park.go
	slow  atomic.Int32
	// mapGen changes whenever a tenant stops mapping to the entry (unmapped
	// or removed): a handle's shortcut to the connection it held last is
	// valid while mapGen is what it was when that connection was acquired.
	mapGen   atomic.Uint32
	lastUsed atomic.Int64 // coarseClock reading of the last checkout or release
	maxConns int          // pool_max_conns
	clock    *coarseClock // the Connector's

	id        uint64 // unique per Connector, for stats and logs
	key       string
	target    string // user@host:port/database, for stats and logs
	pool      *pgxpool.Pool
	connector driver.Connector // stdlib.GetPoolConnector(pool)
	created   time.Time
	hold      time.Duration // holdFor(pool_max_conn_lifetime): see holdMax
	// beforeClose is the pool config's BeforeClose hook, which pgxpool
	// runs when it destroys a connection; evictOne closes one itself.
	beforeClose     func(*pgx.Conn)
	nativeAcquiring int32 // guarded by parkMu: pgx-native acquires under way (see nativeAcquire)

	tenants   map[string]struct{} // guarded by poolSet.mu
	removed   bool                // guarded by poolSet.mu
	forgotten bool                // guarded by poolSet.mu: Forget left it without tenants; resolve clears it when a tenant maps to it again

	inflight atomic.Int32 // Connect calls using the entry right now
	retiring atomic.Bool  // being checked for removal, or removed: enterGen takes the lock (see retireLocked)
	open     atomic.Int32 // physical connections (budget holders)
	verified atomic.Bool  // a connection succeeded once
	probe    chan struct{}
	closed   chan struct{} // closed when closePool has closed the pool

	// Parking; see park.go.
	parkMu    sync.Mutex
	waiters   []*parkWaiter
	held      int
	acquiring int
	closing   bool
	gone      int64

	rejections atomic.Int64
	dials      atomic.Int64 // physical connections opened
	evicted    atomic.Int64 // idle connections closed for the budget
	handedOff  atomic.Int64 // released connections closed for budget waiters
	_          [8]byte      // to a multiple of 64 bytes, so that an entry starts on a cache line (layout_test.go)
}

// touch records a use of e at clock reading now.
func (e *poolEntry) touch(now int64) {
	if e.lastUsed.Load() != now { // most uses fall in the same tick: spare the cache line a write
		e.lastUsed.Store(now)
	}
}

// poolSet maps tenants to pool entries.
type poolSet struct {
	c *Connector

	mu      sync.RWMutex
	tenants map[string]*poolEntry
	// live is tenants for checkouts, read without mu: a lock every
	// checkout for another tenant than its handle's last takes, even a
	// read lock, is a cache line that all cores write. Written with
	// tenants, under mu.
	live    sync.Map // tenant -> *poolEntry
	targets map[string]*poolEntry
	calls   map[string]*resolveCall // tenants being resolved
	// forgotten holds, per tenant, the pools Forget unmapped it from until
	// they are closed, so that a Forget that gave up waiting and is called
	// again waits for them too. The reaper prunes closed ones.
	forgotten map[string][]*poolEntry
	peak      int // highest len(tenants) since the last compaction

	created atomic.Int64
	reaped  atomic.Int64
	forgets atomic.Int64 // tenants Forget unmapped
	nextID  atomic.Uint64
}

type resolveCall struct {
	done  chan struct{}
	err   error
	stale bool // guarded by poolSet.mu: Forget ran while Resolve was answering, so ask again
}

func newPoolSet(c *Connector) *poolSet {
	return &poolSet{
		c:         c,
		tenants:   map[string]*poolEntry{},
		targets:   map[string]*poolEntry{},
		calls:     map[string]*resolveCall{},
		forgotten: map[string][]*poolEntry{},
	}
}

// lookup returns the tenant's entry if it is resolved.
func (s *poolSet) lookup(tenant string) *poolEntry {
	s.mu.RLock()
	e := s.tenants[tenant]
	s.mu.RUnlock()
	return e
}

// enter returns the tenant's entry with its inflight count raised; the
// caller must lower it. A cold tenant is resolved once however many callers
// ask for it at the same time.
func (s *poolSet) enter(ctx context.Context, tenant string) (*poolEntry, error) {
	e, _, err := s.enterGen(ctx, tenant)
	return e, err
}

// testHookEntered, when set by a test, runs between enterGen's lookup
// without the lock and its use of the entry.
var testHookEntered func()

// enterGen is enter that also returns the entry's mapGen as of the lookup.
func (s *poolSet) enterGen(ctx context.Context, tenant string) (*poolEntry, uint32, error) {
	if v, ok := s.live.Load(tenant); ok {
		e := v.(*poolEntry)
		if testHookEntered != nil {
			testHookEntered()
		}
		gen := e.mapGen.Load()
		e.inflight.Add(1)
		// inflight before retiring: retireLocked sets retiring before it
		// reads inflight, so it sees this caller or this caller sees it.
		// The second lookup makes gen one the mapping had: unmap deletes
		// the tenant before it changes mapGen.
		if !e.retiring.Load() {
			if v2, _ := s.live.Load(tenant); v2 == v {
				e.touch(e.clock.read())
				return e, gen, nil
			}
		}
		e.inflight.Add(-1)
	}
	s.mu.RLock()
	if e := s.tenants[tenant]; e != nil {
		e.inflight.Add(1)
		gen := e.mapGen.Load()
		s.mu.RUnlock()
		e.touch(e.clock.read())
		return e, gen, nil
	}
	s.mu.RUnlock()
	for {
		if err := s.c.rejects.get(tenant); err != nil {
			return nil, 0, err
		}
		s.mu.Lock()
		if s.c.closed.Load() {
			s.mu.Unlock()
			return nil, 0, ErrClosed
		}
		if e := s.tenants[tenant]; e != nil {
			e.inflight.Add(1)
			gen := e.mapGen.Load()
			s.mu.Unlock()
			e.touch(e.clock.read())
			return e, gen, nil
		}
		if call := s.calls[tenant]; call != nil {
			s.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
			if call.err != nil && !isContextError(call.err) {
				return nil, 0, call.err
			}
			continue // resolved, or the resolving caller gave up: try again
		}
		call := &resolveCall{done: make(chan struct{})}
		s.calls[tenant] = call
		s.mu.Unlock()

		e, gen, err := s.resolve(ctx, tenant, call)

		s.mu.Lock()
		delete(s.calls, tenant)
		call.err = err
		close(call.done)
		s.mu.Unlock()
		return e, gen, err
	}
}

func isContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// resolve builds the tenant's target and maps the tenant to the entry for
// it, creating the pool if no other tenant shares that target. The entry is
// returned with its inflight count raised, so that the reaper cannot close
// it before the caller uses it.
func (s *poolSet) resolve(ctx context.Context, tenant string, call *resolveCall) (*poolEntry, uint32, error) {
	st := s.c.settings
	var pc *pgxpool.Config
	var id identity
	var key string
	for {
		var err error
		pc, id, err = st.resolve(ctx, tenant)
		if err != nil {
			return nil, 0, err
		}
		key = targetKey(pc)
		if !st.cfg.SharePools {
			key = fmt.Sprintf("%q|%s", tenant, key)
		}
		s.mu.Lock()
		if !call.stale {
			break // with mu held
		}
		call.stale = false // Forget ran meanwhile: the answer may be the old one
		s.mu.Unlock()
	}
	if s.c.closed.Load() {
		s.mu.Unlock()
		return nil, 0, ErrClosed
	}
	if e := s.targets[key]; e != nil {
		e.tenants[tenant] = struct{}{}
		e.forgotten = false // serves a tenant again
		s.tenants[tenant] = e
		s.live.Store(tenant, e)
		e.inflight.Add(1)
		gen := e.mapGen.Load()
		s.mu.Unlock()
		e.touch(e.clock.read())
		return e, gen, nil
	}
	e := &poolEntry{
		id:      s.nextID.Add(1),
		key:     key,
		target:  fmt.Sprintf("%s@%s:%d/%s", pc.ConnConfig.User, pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database),
		tenants: map[string]struct{}{tenant: {}},
		probe:   make(chan struct{}, 1),
		closed:  make(chan struct{}),
		created: time.Now(),
		clock:   &s.c.clock,
	}
	e.touch(e.clock.read())
	s.c.instrument(pc, e, tenant, id)
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		s.mu.Unlock()
		return nil, 0, fmt.Errorf("tenantpg: pool for tenant %q: %w", tenant, err)
	}
	e.pool = pool
	e.maxConns = int(pc.MaxConns)
	e.hold = holdFor(pc.MaxConnLifetime)
	e.beforeClose = pc.BeforeClose
	e.slots = make([]atomic.Pointer[pconn], e.maxConns)
	e.connector = stdlib.GetPoolConnector(pool)
	s.targets[key] = e
	s.tenants[tenant] = e
	s.live.Store(tenant, e)
	s.peak = max(s.peak, len(s.tenants))
	e.inflight.Add(1)
	s.mu.Unlock()
	s.created.Add(1)
	s.c.log(ctx, slog.LevelInfo, "tenantpg: pool created", slog.String("tenant", tenant), slog.String("target", e.target), slog.Uint64("pool", e.id))
	return e, 0, nil
}

// unmapLocked removes tenant's mapping to e, so that its next request
// resolves again (reject, forget).
func (s *poolSet) unmapLocked(tenant string, e *poolEntry) {
	delete(s.tenants, tenant)
	s.live.Delete(tenant) // before mapGen changes: see enterGen
	delete(e.tenants, tenant)
	e.mapGen.Add(1)
}

// forget unmaps tenant, drops its rejection, makes a resolve of it under
// way ask Resolve again, and closes the pools Forget has unmapped it from
// (now or before) that serve no tenant, as soon as nothing uses them. It
// waits until each is closed or serves a tenant again (awaitClosed), or
// ctx ends (see Connector.Forget).
func (s *poolSet) forget(ctx context.Context, tenant string) error {
	s.mu.Lock()
	// Under mu, as rejections are cached: a dial of the old pool that the
	// server rejects after this point finds the tenant unmapped and caches
	// nothing (reject).
	s.c.rejects.forget(tenant)
	if call := s.calls[tenant]; call != nil {
		call.stale = true
	}
	e := s.tenants[tenant]
	if e != nil {
		s.unmapLocked(tenant, e)
		s.forgets.Add(1)
		e.forgotten = len(e.tenants) == 0 // for the reaper's log: a shared pool is not the tenant's to close
		// Once per tenant: it may have mapped back to e since an earlier Forget.
		if !slices.Contains(s.forgotten[tenant], e) {
			s.forgotten[tenant] = append(s.forgotten[tenant], e)
		}
	}
	var wait []*poolEntry
	for _, f := range s.forgotten[tenant] {
		if servesTenantsLocked(f) {
			continue // shared with other tenants, or the tenant resolved to it again: it stays
		}
		// Unused now: close it. In use (a checkout holds a connection or is
		// getting one): the reaper closes it when it is not, as it closes
		// every pool that serves no tenant. Removed: being closed.
		if retireLocked(f) {
			s.removeLocked(f)
			s.reaped.Add(1)
			s.closeRemoved(f, "forgotten", []string{tenant})
		}
		wait = append(wait, f)
	}
	s.mu.Unlock()
	if e != nil {
		s.c.log(ctx, slog.LevelInfo, "tenantpg: tenant forgotten", slog.String("tenant", tenant),
			slog.String("target", e.target), slog.Uint64("pool", e.id))
	}
	for _, f := range wait {
		if err := s.awaitClosed(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

// servesTenantsLocked reports whether e is in the set and serves a tenant.
func servesTenantsLocked(e *poolEntry) bool { return !e.removed && len(e.tenants) != 0 }

// awaitClosed waits until forgotten pool f is closed, or serves a tenant
// again (the forgotten tenant resolved to the same target meanwhile, or
// another tenant that shares it did: it stays open), or ctx ends.
func (s *poolSet) awaitClosed(ctx context.Context, f *poolEntry) error {
	recheck := time.NewTicker(20 * time.Millisecond)
	defer recheck.Stop()
	for {
		select {
		case <-f.closed:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-recheck.C:
			s.mu.RLock()
			serves := servesTenantsLocked(f)
			s.mu.RUnlock()
			if serves {
				return nil
			}
		}
	}
}

// reject caches a rejection of tenant by a dial of e, and unmaps tenant
// from e, if tenant is still mapped to e; a rejection by a pool the tenant
// no longer maps to (Forget ran since the dial began) says nothing about
// where the tenant connects now and is not cached.
func (s *poolSet) reject(tenant string, e *poolEntry, err error) *RejectedError {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tenants[tenant] != e {
		return s.c.rejects.put(tenant, err, false)
	}
	s.unmapLocked(tenant, e)
	return s.c.rejects.put(tenant, err, true)
}

// removableLocked reports whether e can be closed: nobody is connecting
// through it and none of its connections is checked out (parked ones do not
// count) or being built. A checkout may enter e right after; retireLocked
// is the check that excludes it.
func removableLocked(e *poolEntry) bool {
	if e.removed || e.inflight.Load() != 0 {
		return false
	}
	st := e.pool.Stat()
	return int(st.AcquiredConns()) == e.parkedLen() && st.ConstructingConns() == 0
}

// retireLocked is removableLocked for a caller that removes e (removeLocked)
// under the same hold of mu when it reports true. It raises retiring before
// it reads inflight, so a checkout entering e without the lock (enterGen)
// is either counted or sees retiring and takes the lock; retiring stays up
// when e can be removed.
func retireLocked(e *poolEntry) bool {
	if e.removed {
		return false
	}
	e.retiring.Store(true)
	if removableLocked(e) {
		return true
	}
	e.retiring.Store(false)
	return false
}

// removeLocked unmaps e and returns the tenants it served; the caller
// closes its pool outside the lock.
func (s *poolSet) removeLocked(e *poolEntry) []string {
	e.removed = true
	e.retiring.Store(true)
	e.mapGen.Add(1)
	delete(s.targets, e.key)
	tenants := make([]string, 0, len(e.tenants))
	for t := range e.tenants {
		tenants = append(tenants, t)
		if s.tenants[t] == e {
			delete(s.tenants, t)
			s.live.Delete(t)
		}
	}
	slices.Sort(tenants)
	return tenants
}

// evictOne closes one idle connection of the least recently used pool
// other than self and reports whether it did. A pool whose tenant is active
// (connections checked out or being requested) gives one up only if it holds
// at least two more connections than self, or self has none: the same
// fairness rule as budget.shouldYield, so that busy tenants do not take turns
// evicting each other; a starving caller may take from any pool. An inactive
// pool left without connections is closed.
func (s *poolSet) evictOne(self *poolEntry, starving bool) bool {
	cands := s.c.budget.holderList(self)
	slices.SortFunc(cands, func(a, b *poolEntry) int { return cmp.Compare(a.lastUsed.Load(), b.lastUsed.Load()) })
	for _, e := range cands {
		s.mu.Lock()
		inactive := removableLocked(e)
		s.mu.Unlock()
		if !inactive && !starving {
			if mine := self.open.Load(); mine != 0 && mine+1 >= e.open.Load() {
				continue
			}
		}
		e.unparkAll() // parked connections become pgxpool's idle ones
		idle := e.pool.AcquireAllIdle(context.Background())
		if len(idle) == 0 {
			continue
		}
		// Closed here, not by pgxpool (which destroys connections on a
		// goroutine), so that the slot is free when evictOne returns.
		victim := idle[0].Hijack()
		for _, c := range idle[1:] {
			stateOf(c.Conn()).ownRelease = true
			c.Release()
		}
		if e.beforeClose != nil {
			e.beforeClose(victim)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = victim.Close(ctx)
		cancel()
		s.c.budget.evictConns.Add(1)
		e.evicted.Add(1)
		s.c.log(context.Background(), slog.LevelDebug, "tenantpg: idle connection closed for the connection budget",
			slog.String("target", e.target), slog.Uint64("pool", e.id), slog.Uint64("for_pool", self.id))
		if inactive && e.open.Load() == 0 {
			s.mu.Lock()
			closeIt := e.open.Load() == 0 && retireLocked(e)
			var tenants []string
			if closeIt {
				tenants = s.removeLocked(e)
			}
			s.mu.Unlock()
			if closeIt {
				e.closePool()
				s.c.budget.evictPools.Add(1)
				s.c.log(context.Background(), slog.LevelInfo, "tenantpg: pool closed", slog.String("reason", "budget"),
					slog.String("target", e.target), slog.Uint64("pool", e.id), slog.Any("tenants", tenants))
			}
		}
		return true
	}
	return false
}

// unparkStale gives connections parked for parkMax (by the coarse clock,
// whose reading now is) back to pgxpool.
func (s *poolSet) unparkStale(now int64) {
	s.mu.RLock()
	all := make([]*poolEntry, 0, len(s.targets))
	for _, e := range s.targets {
		all = append(all, e)
	}
	s.mu.RUnlock()
	cutoff := now - int64(parkMax)
	for _, e := range all {
		e.unpark(cutoff)
	}
}

// reap closes pools unused for idle or longer (by the coarse clock, whose
// reading now is; 0 closes none for idleness) and pools left without
// tenants. It returns how many it closed.
func (s *poolSet) reap(now int64, idle time.Duration) int {
	type victim struct {
		e       *poolEntry
		reason  string
		tenants []string
	}
	var victims []victim
	s.mu.Lock()
	for _, e := range s.targets {
		stale := idle > 0 && now-e.lastUsed.Load() >= int64(idle)
		if !stale && len(e.tenants) != 0 {
			continue
		}
		// Invalidate handle shortcuts before looking: a handle that
		// claimed a parked connection under the old generation did so
		// before parkedLen counts it as in use (see Conn.checkout).
		e.mapGen.Add(1)
		if retireLocked(e) {
			reason := "idle"
			switch {
			case e.forgotten && len(e.tenants) == 0:
				reason = "forgotten" // and in use when Forget ran
			case len(e.tenants) == 0:
				reason = "no tenants" // its tenants were rejected
			}
			victims = append(victims, victim{e, reason, s.removeLocked(e)})
		}
	}
	for t, fs := range s.forgotten {
		fs = slices.DeleteFunc(fs, (*poolEntry).isClosed)
		if len(fs) == 0 {
			delete(s.forgotten, t)
		} else {
			s.forgotten[t] = fs
		}
	}
	s.compactLocked()
	s.mu.Unlock()
	// Closed off the reaper's goroutine (closeRemoved): the reaper should
	// not wait for a pool's last connection. Counted now, as they leave
	// Stats().Pools, so that the two agree.
	s.reaped.Add(int64(len(victims)))
	for _, v := range victims {
		s.closeRemoved(v.e, v.reason, v.tenants)
	}
	return len(victims)
}

// closeRemoved closes the pool of e, which removeLocked took out of the
// set, on a goroutine Connector.Close waits for: pgxpool.Close waits for
// connections checked out of the pool (a pgx-native user of Pool may have
// acquired one since the check), and neither the reaper nor a Forget's
// caller should wait with it.
func (s *poolSet) closeRemoved(e *poolEntry, reason string, tenants []string) {
	s.c.closers.Add(1)
	go func() {
		defer s.c.closers.Done()
		e.closePool()
		s.c.log(context.Background(), slog.LevelInfo, "tenantpg: pool closed", slog.String("reason", reason),
			slog.String("target", e.target), slog.Uint64("pool", e.id), slog.Any("tenants", tenants))
	}()
}

// compactLocked rebuilds the maps once they have shrunk to a quarter of
// their peak: Go maps keep their buckets after deletes, so a burst of
// 100,000 tenants would otherwise hold memory after their pools are gone.
func (s *poolSet) compactLocked() {
	s.peak = max(s.peak, len(s.tenants))
	if s.peak < compactMin || len(s.tenants) > s.peak/4 {
		return
	}
	tenants := make(map[string]*poolEntry, len(s.tenants))
	for k, v := range s.tenants {
		tenants[k] = v
	}
	targets := make(map[string]*poolEntry, len(s.targets))
	for k, v := range s.targets {
		targets[k] = v
	}
	s.tenants, s.targets, s.peak = tenants, targets, len(tenants)
}

// compactMin is the map size below which compaction is not worth it.
const compactMin = 256

// closeAll removes every entry and closes its pool, waiting for checked out
// connections to come back.
func (s *poolSet) closeAll() {
	s.mu.Lock()
	all := make([]*poolEntry, 0, len(s.targets))
	for _, e := range s.targets {
		s.removeLocked(e)
		all = append(all, e)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.closePool()
		}()
	}
	wg.Wait()
}

// entries returns a snapshot of the pool entries with their tenants.
func (s *poolSet) entries() []entrySnapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]entrySnapshot, 0, len(s.targets))
	for _, e := range s.targets {
		ts := make([]string, 0, len(e.tenants))
		for t := range e.tenants {
			ts = append(ts, t)
		}
		slices.Sort(ts)
		out = append(out, entrySnapshot{e: e, tenants: ts})
	}
	return out
}

type entrySnapshot struct {
	e       *poolEntry
	tenants []string
}
