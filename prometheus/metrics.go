package tenantpgprom

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tenantpg/tenantpg"
)

// Per-tenant counters, as indices of a counterSet.
const (
	cAcquires = iota
	cAcquireSeconds
	cAcquireWaits
	cAcquireWaitSeconds
	cCanceledAcquires
	cDials
	cOpened
	cEvictedIdle
	cEvictedLifetime
	cRejections
	nCounters
)

// counterSet holds one value of every per-tenant counter.
type counterSet [nCounters]float64

func (a *counterSet) add(b *counterSet) {
	for i := range a {
		a[i] += b[i]
	}
}

// Per-tenant gauges, as indices of sample.gauges.
const (
	gIdle = iota
	gInUse
	gConstructing
	gOpen
	gMax
	gPools
	nGauges
)

// sample is the figures of one pool, or the sum of several.
type sample struct {
	gauges   [nGauges]float64
	counters counterSet
}

func (s *sample) add(o *sample) {
	for i := range s.gauges {
		s.gauges[i] += o.gauges[i]
	}
	s.counters.add(&o.counters)
}

// sampleOf extracts the figures of one tenant pool.
func sampleOf(p *tenantpg.PoolStats) sample {
	var s sample
	s.gauges[gOpen] = float64(p.OpenConns)
	s.gauges[gPools] = 1
	s.counters[cDials] = float64(p.Dials)
	s.counters[cRejections] = float64(p.Rejections)
	s.counters[cAcquires] = float64(p.Checkouts)
	if ps := p.Pool; ps != nil {
		// Parked connections are acquired for pgxpool but idle for users.
		s.gauges[gIdle] = float64(ps.IdleConns()) + float64(p.Parked)
		s.gauges[gInUse] = float64(ps.AcquiredConns()) - float64(p.Parked)
		s.gauges[gConstructing] = float64(ps.ConstructingConns())
		s.gauges[gMax] = float64(ps.MaxConns())
		s.counters[cAcquireSeconds] = ps.AcquireDuration().Seconds()
		s.counters[cAcquireWaits] = float64(ps.EmptyAcquireCount())
		s.counters[cAcquireWaitSeconds] = ps.EmptyAcquireWaitTime().Seconds()
		s.counters[cCanceledAcquires] = float64(ps.CanceledAcquireCount())
		s.counters[cOpened] = float64(ps.NewConnsCount())
		s.counters[cEvictedIdle] = float64(ps.MaxIdleDestroyCount())
		s.counters[cEvictedLifetime] = float64(ps.MaxLifetimeDestroyCount())
	}
	return s
}

// globalMetric is one figure of tenantpg.Stats.
type globalMetric struct {
	name, help string
	typ        prometheus.ValueType
	value      func(*tenantpg.Stats) float64
}

var globalMetrics = []globalMetric{
	{"tenantpg_budget_max_connections", "Cap on physical connections across all tenant pools (tenant_max_conns); 0 means no cap.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.MaxConns) }},
	{"tenantpg_budget_open_connections", "Physical connections open now, across all tenant pools.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.OpenConns) }},
	{"tenantpg_budget_peak_connections", "Highest number of physical connections open at once since the connector started.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.PeakConns) }},
	{"tenantpg_budget_reserved_connections", "Budget slots granted to connects that have not dialed yet.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.Reserved) }},
	{"tenantpg_budget_waiters", "Connects waiting for a budget slot now.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.Waiting) }},
	{"tenantpg_budget_dials_total", "Physical connections dialed, across all tenant pools.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.Dials) }},
	{"tenantpg_budget_waits_total", "Connects that had to wait for a budget slot.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.BudgetWaits) }},
	{"tenantpg_budget_wait_seconds_total", "Time connects spent waiting for a budget slot.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return s.BudgetWait.Seconds() }},
	{"tenantpg_budget_errors_total", "Budget waits that ended with a *tenantpg.BudgetError (the caller's context ended first).",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.BudgetErrors) }},
	{"tenantpg_budget_evicted_connections_total", "Idle connections of other tenants closed to free a budget slot.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.EvictedConns) }},
	{"tenantpg_budget_evicted_pools_total", "Whole idle tenant pools closed to free budget slots.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.EvictedPools) }},
	{"tenantpg_budget_handed_off_connections_total", "Released connections closed so that their slot went to a waiting tenant.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.HandedOff) }},
	{"tenantpg_pools", "Tenant pools open now.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(len(s.Pools)) }},
	{"tenantpg_tenants", "Tenants routed to an open pool now.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 {
			n := 0
			for _, p := range s.Pools {
				n += len(p.Tenants)
			}
			return float64(n)
		}},
	{"tenantpg_pools_created_total", "Tenant pools created.",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.PoolsCreated) }},
	{"tenantpg_pools_reaped_total", "Tenant pools closed after going unused for tenant_pool_idle, or left serving no tenant (rejected or forgotten).",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.PoolsReaped) }},
	{"tenantpg_tenants_forgotten_total", "Tenants Connector.Forget unmapped from their pool (their pools, once closed, count in tenantpg_pools_reaped_total).",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.Forgotten) }},
	{"tenantpg_rejected_tenants", "Tenants the server or pooler rejected, failing fast from the negative cache now.",
		prometheus.GaugeValue, func(s *tenantpg.Stats) float64 { return float64(s.Rejected) }},
	{"tenantpg_no_tenant_checkouts_total", "Checkouts that ended without a tenant: none in their context and no statement bound one (answered without a connection).",
		prometheus.CounterValue, func(s *tenantpg.Stats) float64 { return float64(s.NoTenant) }},
}

// tenantCounter describes one per-tenant counter; evicted connections share
// one metric with a reason label.
var tenantCounters = [nCounters]struct{ name, help, reason string }{
	cAcquires: {"tenantpg_tenant_acquires_total",
		"Connections handed out by the tenant's pool (one per database/sql checkout; parked or from pgxpool).", ""},
	cAcquireSeconds: {"tenantpg_tenant_acquire_seconds_total",
		"Time spent acquiring connections from the tenant's pool, including waits and dials.", ""},
	cAcquireWaits: {"tenantpg_tenant_acquire_waits_total",
		"Acquires that found no idle connection in the tenant's pool and waited for one to be released or dialed.", ""},
	cAcquireWaitSeconds: {"tenantpg_tenant_acquire_wait_seconds_total",
		"Time acquires spent waiting because the tenant's pool had no idle connection.", ""},
	cCanceledAcquires: {"tenantpg_tenant_canceled_acquires_total",
		"Acquires from the tenant's pool that ended with the caller's context.", ""},
	cDials: {"tenantpg_tenant_dials_total",
		"Physical connections the tenant's pool dialed, counted against the budget, including failed attempts.", ""},
	cOpened: {"tenantpg_tenant_connection_attempts_total",
		"Connects the tenant's pool started (pgxpool's NewConnsCount): successful or not, including attempts that found the connection budget full and were retried.", ""},
	cEvictedIdle: {"tenantpg_tenant_evicted_connections_total",
		"Connections the tenant's pool closed on its own, by reason (pool_max_conn_idle_time, pool_max_conn_lifetime).", "max_idle_time"},
	cEvictedLifetime: {"tenantpg_tenant_evicted_connections_total", "", "max_lifetime"},
	cRejections: {"tenantpg_tenant_rejections_total",
		"Logins of the tenant's pool that the server or pooler rejected (a *tenantpg.RejectedError).", ""},
}

// connStates are the values of the state label of tenantpg_tenant_connections.
var connStates = [...]struct {
	gauge int
	state string
}{{gIdle, "idle"}, {gInUse, "in_use"}, {gConstructing, "constructing"}}

// descs are the descriptors of a Collector.
type descs struct {
	global   []*prometheus.Desc // parallel to globalMetrics
	conns    *prometheus.Desc
	open     *prometheus.Desc
	max      *prometheus.Desc
	pools    *prometheus.Desc
	counters [nCounters]*prometheus.Desc // evicted ones share a Desc
}

func newDescs(constLabels prometheus.Labels) descs {
	var d descs
	for _, m := range globalMetrics {
		d.global = append(d.global, prometheus.NewDesc(m.name, m.help, nil, constLabels))
	}
	tenant := []string{"tenant"}
	d.conns = prometheus.NewDesc("tenantpg_tenant_connections",
		"Connections of the tenant's pool by state: idle, in_use (checked out), constructing (being dialed).",
		[]string{"tenant", "state"}, constLabels)
	d.open = prometheus.NewDesc("tenantpg_tenant_open_connections",
		"Physical connections the tenant's pool holds against the budget, including ones being set up or closed.",
		tenant, constLabels)
	d.max = prometheus.NewDesc("tenantpg_tenant_max_connections",
		"Size limit of the tenant's pool (pool_max_conns), summed over the pools under the label.",
		tenant, constLabels)
	d.pools = prometheus.NewDesc("tenantpg_tenant_pools",
		"Pools summed under the tenant label value: 1 for a named tenant, the number of other pools for the other label.",
		tenant, constLabels)
	for i, m := range tenantCounters {
		if i == cEvictedLifetime {
			d.counters[i] = d.counters[cEvictedIdle]
			continue
		}
		labels := tenant
		if m.reason != "" {
			labels = []string{"tenant", "reason"}
		}
		d.counters[i] = prometheus.NewDesc(m.name, m.help, labels, constLabels)
	}
	return d
}

// all returns every distinct descriptor.
func (d *descs) all() []*prometheus.Desc {
	out := append([]*prometheus.Desc{}, d.global...)
	out = append(out, d.conns, d.open, d.max, d.pools)
	for i, c := range d.counters {
		if i != cEvictedLifetime {
			out = append(out, c)
		}
	}
	return out
}

func (c *Collector) emitGlobal(ch chan<- prometheus.Metric, st tenantpg.Stats) {
	for i, m := range globalMetrics {
		ch <- prometheus.MustNewConstMetric(c.d.global[i], m.typ, m.value(&st))
	}
}

// emitTenant sends the metrics of one tenant label value: gauges from g (nil
// means zero) and counters from the running totals.
func (c *Collector) emitTenant(ch chan<- prometheus.Metric, label string, g *sample, totals *counterSet) {
	if g == nil {
		g = &sample{}
	}
	for _, s := range connStates {
		ch <- prometheus.MustNewConstMetric(c.d.conns, prometheus.GaugeValue, g.gauges[s.gauge], label, s.state)
	}
	ch <- prometheus.MustNewConstMetric(c.d.open, prometheus.GaugeValue, g.gauges[gOpen], label)
	ch <- prometheus.MustNewConstMetric(c.d.max, prometheus.GaugeValue, g.gauges[gMax], label)
	ch <- prometheus.MustNewConstMetric(c.d.pools, prometheus.GaugeValue, g.gauges[gPools], label)
	for i, m := range tenantCounters {
		if m.reason != "" {
			ch <- prometheus.MustNewConstMetric(c.d.counters[i], prometheus.CounterValue, totals[i], label, m.reason)
		} else {
			ch <- prometheus.MustNewConstMetric(c.d.counters[i], prometheus.CounterValue, totals[i], label)
		}
	}
}
