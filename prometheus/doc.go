// Package tenantpgprom exports the statistics of a tenantpg connector as
// Prometheus metrics.
//
// It lives in its own module (github.com/tenantpg/tenantpg/prometheus) so
// that the driver's go.mod does not depend on the Prometheus client. Create a
// [Collector] for a *sql.DB opened with the tenantpg driver and register it:
//
//	c, err := tenantpgprom.NewDB(db, tenantpgprom.Options{TopN: 20})
//	if err != nil { ... }
//	prometheus.MustRegister(c)
//
// # Metrics
//
// Global figures come from tenantpg.Stats: tenantpg_budget_* (the connection
// budget: cap, open, peak, reserved and waiting connects, dials, waits,
// wait time, errors, evictions, hand-offs), tenantpg_pools,
// tenantpg_tenants, tenantpg_pools_created_total, tenantpg_pools_reaped_total,
// tenantpg_tenants_forgotten_total, tenantpg_rejected_tenants and
// tenantpg_no_tenant_checkouts_total. They are
// the connector's own counters and are exported as they are.
//
// Per-tenant figures come from each tenant pool's tenantpg.PoolStats and
// pgxpool.Stat, and carry a "tenant" label: tenantpg_tenant_connections
// (with "state" idle, in_use or constructing), tenantpg_tenant_open_connections,
// tenantpg_tenant_max_connections, tenantpg_tenant_pools and the counters
// tenantpg_tenant_acquires_total, tenantpg_tenant_acquire_seconds_total,
// tenantpg_tenant_acquire_waits_total, tenantpg_tenant_acquire_wait_seconds_total,
// tenantpg_tenant_canceled_acquires_total, tenantpg_tenant_dials_total,
// tenantpg_tenant_connection_attempts_total,
// tenantpg_tenant_evicted_connections_total (with "reason" max_idle_time or
// max_lifetime) and tenantpg_tenant_rejections_total.
//
// # Cardinality
//
// Only the Options.TopN most active tenants (default [DefaultTopN]) get their
// own "tenant" label value; all other pools are summed under [OtherTenant]
// ("__other__"), which is always exported. A scrape therefore has at most
// TopN+1 values of the tenant label, however many tenants there are.
//
// Activity is the number of checkouts (PoolStats.Checkouts, one per
// database/sql checkout), decayed exponentially with Options.HalfLife (default
// [DefaultHalfLife]) so that a tenant that was busy an hour ago gives way to
// one that is busy now, plus the connections the tenant has in use at the
// scrape. Ties go to the tenant with more connections in use, then to the
// smaller tenant id.
//
// # Counters across reaping and ranking changes
//
// pgxpool's counters start at zero again when tenantpg closes an idle tenant
// pool and a later request creates a new one, and a tenant moves between its
// own label value and "__other__" as the ranking changes. The collector
// therefore keeps its own running totals: at every scrape it adds, for each
// pool, how much each counter grew since the previous scrape to the label
// value the pool's tenant has in this scrape. Every exported counter series
// is thus monotonic, and every increment goes to exactly one series, so
// sum(rate(tenantpg_tenant_acquires_total[5m])) is the rate of all tenants.
// A tenant's own series counts only what happened while it was in the top
// N; while it is out of the top N or has no pool, its series is not
// exported, and it resumes from its earlier value when the tenant is named
// again (unless Options.ForgetAfter has passed).
//
// Limitations, because the driver does not keep per-pool counters after it
// closes a pool: what a pool did between the last scrape and its closing
// (reaped for idleness, closed to free budget slots, or closed with the
// connector) is not counted, nor is a pool created and closed between two
// scrapes. The global tenantpg_budget_* and tenantpg_pools_* counters are
// exact. Rejections are counted on the pool that was rejected, which the
// driver detaches from its tenant at once, so they land under "__other__";
// tenantpg_rejected_tenants (tenants in the negative cache) is exact.
package tenantpgprom
