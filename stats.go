package tenantpg

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Stats is a snapshot of a Connector: the global budget and every tenant
// pool.
type Stats struct {
	MaxConns     int   // tenant_max_conns; 0 means no cap
	OpenConns    int   // physical connections open now, across all pools
	PeakConns    int   // highest OpenConns seen
	Reserved     int   // slots granted to connects that have not dialed yet
	Dials        int64 // physical connections dialed
	BudgetWaits  int64 // connects that waited for a budget slot
	BudgetWait   time.Duration
	BudgetErrors int64 // waits that ended with a *BudgetError
	Waiting      int   // connects waiting for a slot now
	EvictedConns int64 // idle connections closed to free a slot
	EvictedPools int64 // whole idle pools closed to free slots
	HandedOff    int64 // released connections closed because others waited
	PoolsCreated int64
	PoolsReaped  int64 // pools closed after tenant_pool_idle, or left serving no tenant (rejected, or Connector.Forget)
	Forgotten    int64 // tenants Connector.Forget unmapped from a pool (a Forget of a tenant without one is not counted)
	Rejected     int   // tenants in the negative cache now
	Rejections   int64 // tenants rejected by the server so far (cached repeats not counted)
	NoTenant     int64 // checkouts that ended without a tenant: none in their context and no operation bound one (counted at release)
	Pools        []PoolStats
}

// PoolStats describes one tenant pool. Tenants that resolve to the same
// target share a pool and are listed together.
type PoolStats struct {
	ID         uint64   // unique per Connector; a reaped and recreated pool gets a new one
	Target     string   // user@host:port/database (no password)
	Tenants    []string // sorted
	OpenConns  int      // physical connections of this pool
	Parked     int      // connections waiting for this pool's next checkout (counted as acquired in Pool)
	Checkouts  int64    // connections handed out, parked or from pgxpool
	Acquiring  int      // checkouts waiting now: in pgxpool's Acquire (for a release or a dial), or for a connection another checkout gives back
	Dials      int64    // physical connections this pool opened
	Created    time.Time
	LastUsed   time.Time     // last checkout or release, to the reaper's tick (at most 500 ms)
	Rejections int64         // logins of this pool rejected by the server
	Evicted    int64         // idle connections closed for the budget
	HandedOff  int64         // released connections closed for budget waiters
	Pool       *pgxpool.Stat // pgxpool's own figures
}

// Stats returns a snapshot of the Connector.
func (c *Connector) Stats() Stats {
	b := c.budget
	b.mu.Lock()
	reserved := b.used - int(b.open.Load())
	b.mu.Unlock()
	if b.max == 0 {
		reserved = 0
	}
	st := Stats{
		Reserved:     reserved,
		MaxConns:     b.max,
		OpenConns:    int(b.open.Load()),
		PeakConns:    int(b.peak.Load()),
		Dials:        b.dials.Load(),
		BudgetWaits:  b.waits.Load(),
		BudgetWait:   time.Duration(b.waitNanos.Load()),
		BudgetErrors: b.timeouts.Load(),
		Waiting:      int(b.waiting.Load()),
		EvictedConns: b.evictConns.Load(),
		EvictedPools: b.evictPools.Load(),
		HandedOff:    b.closeOnWait.Load(),
		PoolsCreated: c.set.created.Load(),
		PoolsReaped:  c.set.reaped.Load(),
		Forgotten:    c.set.forgets.Load(),
		Rejected:     c.rejects.len(),
		Rejections:   c.rejections.Load(),
		NoTenant:     c.noTenant.Load(),
	}
	for _, s := range c.set.entries() {
		served, acquiring := s.e.checkoutStats()
		st.Pools = append(st.Pools, PoolStats{
			Target:     s.e.target,
			Tenants:    s.tenants,
			OpenConns:  int(s.e.open.Load()),
			Parked:     s.e.parkedLen(),
			Checkouts:  served,
			Acquiring:  acquiring,
			Dials:      s.e.dials.Load(),
			Created:    s.e.created,
			LastUsed:   c.clock.wall(s.e.lastUsed.Load()),
			ID:         s.e.id,
			Rejections: s.e.rejections.Load(),
			Evicted:    s.e.evicted.Load(),
			HandedOff:  s.e.handedOff.Load(),
			Pool:       s.e.pool.Stat(),
		})
	}
	slices.SortFunc(st.Pools, func(a, b PoolStats) int { return strings.Compare(a.Target, b.Target) })
	return st
}

// Tenant returns the stats of the pool serving tenant, if it has one.
func (s Stats) Tenant(tenant string) (PoolStats, bool) {
	for _, p := range s.Pools {
		if _, ok := slices.BinarySearch(p.Tenants, tenant); ok {
			return p, true
		}
	}
	return PoolStats{}, false
}

// ConnectorOf returns the Connector behind db, opened with OpenDB,
// sql.OpenDB(connector) or sql.Open("tenantpg", dsn). It fails with
// ErrNotTenantpg for any other *sql.DB.
func ConnectorOf(db *sql.DB) (*Connector, error) {
	if d, ok := db.Driver().(*Driver); ok && d.c != nil {
		return d.c, nil
	}
	return nil, ErrNotTenantpg
}

// DBStats returns the Connector statistics of db. It fails with
// ErrNotTenantpg for a *sql.DB that does not use tenantpg.
func DBStats(db *sql.DB) (Stats, error) {
	c, err := ConnectorOf(db)
	if err != nil {
		return Stats{}, err
	}
	return c.Stats(), nil
}

// Pool returns the pgxpool.Pool of the tenant in ctx for pgx-native work.
// It fails with ErrNoTenant when ctx has no tenant, ErrNotTenantpg when db
// does not use tenantpg, and as Connect does for invalid or rejected tenants.
func Pool(ctx context.Context, db *sql.DB) (*pgxpool.Pool, error) {
	c, err := ConnectorOf(db)
	if err != nil {
		return nil, err
	}
	t, ok := TenantFromContext(ctx)
	if !ok {
		return nil, ErrNoTenant
	}
	return c.Pool(ctx, t)
}
