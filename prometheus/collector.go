package tenantpgprom

import (
	"cmp"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tenantpg/tenantpg"
)

// Defaults for the Options fields whose zero value means "use the default".
const (
	// DefaultTopN is how many tenants get their own label value.
	DefaultTopN = 20
	// DefaultHalfLife is the half-life of the acquire count that ranks
	// tenants.
	DefaultHalfLife = 5 * time.Minute
	// DefaultForgetAfter is how long the collector keeps the running totals
	// of a tenant that has no pool.
	DefaultForgetAfter = time.Hour
	// OtherTenant is the default tenant label value under which the pools
	// of all tenants outside the top N are summed.
	OtherTenant = "__other__"
)

// labelName matches the label names that work with every Prometheus
// version.
var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// maxLabelTenants caps how many tenant ids the label of a shared pool lists.
const maxLabelTenants = 8

// ErrInvalidOptions is matched (errors.Is) by the error New and NewDB
// return for unusable Options.
var ErrInvalidOptions = errors.New("tenantpgprom: invalid options")

// Options configures a Collector. The zero value is usable.
type Options struct {
	// TopN is how many tenants, the most active ones, get their own value
	// of the tenant label; the rest are summed under OtherLabel. Activity
	// is the tenant's pool acquires, decayed with HalfLife, plus its
	// connections in use at the scrape. 0 means DefaultTopN; a negative
	// value names no tenant (everything is summed under OtherLabel).
	TopN int
	// OtherLabel is the tenant label value of the pools outside the top N.
	// Empty means OtherTenant ("__other__"). A tenant whose id equals it is
	// never named and always counts under it.
	OtherLabel string
	// HalfLife is the half-life of the acquire count that ranks tenants:
	// acquires that happened HalfLife ago weigh half as much as new ones.
	// 0 means DefaultHalfLife; a negative value never decays, ranking by
	// all acquires the collector has seen.
	HalfLife time.Duration
	// ForgetAfter is how long the collector keeps the running totals of a
	// tenant that has no pool (its pool was reaped and no request came
	// since). If the tenant comes back later, its own counter series starts
	// at zero again, which Prometheus reads as a counter reset. 0 means
	// DefaultForgetAfter; a negative value keeps them as long as the
	// collector lives.
	ForgetAfter time.Duration
	// ConstLabels are added to every metric, for example
	// prometheus.Labels{"db": "orders"} to tell two connectors apart in
	// one registry.
	ConstLabels prometheus.Labels
}

// Collector is a prometheus.Collector over a tenantpg connector. It is safe
// for concurrent use, and one Collector may be registered with several
// registries. See the package documentation for the metrics it exports.
type Collector struct {
	stats    func() tenantpg.Stats
	sample   func(*tenantpg.PoolStats) sample // sampleOf; tests fake it
	now      func() time.Time
	topN     int
	other    string
	halfLife time.Duration
	forget   time.Duration
	d        descs

	mu      sync.Mutex
	pools   map[poolKey]*poolState   // pools seen at the previous scrape
	tenants map[string]*tenantState  // by tenant label value
	others  counterSet               // running totals of OtherLabel
	keep    map[*tenantState]bool    // scratch: named at this scrape
	ranked  []*tenantState           // scratch
	groups  map[*tenantState]*sample // scratch
}

// New returns a Collector for the connector c. It fails, matching
// ErrInvalidOptions, when c is nil or opts is not usable (invalid label
// names or values); it opens no connection.
func New(c *tenantpg.Connector, opts Options) (*Collector, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil *tenantpg.Connector", ErrInvalidOptions)
	}
	return newCollector(c.Stats, opts)
}

// NewDB returns a Collector for db, which must have been opened with
// sql.Open("tenantpg", ...), tenantpg.OpenDB or sql.OpenDB over a
// *tenantpg.Connector. For any other *sql.DB it fails with an error matching
// tenantpg.ErrNotTenantpg; for unusable opts with one matching
// ErrInvalidOptions.
func NewDB(db *sql.DB, opts Options) (*Collector, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", tenantpg.ErrNotTenantpg)
	}
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		return nil, err
	}
	return New(c, opts)
}

func newCollector(stats func() tenantpg.Stats, opts Options) (*Collector, error) {
	c := &Collector{
		stats:    stats,
		sample:   sampleOf,
		now:      time.Now,
		topN:     opts.TopN,
		other:    cmp.Or(opts.OtherLabel, OtherTenant),
		halfLife: cmp.Or(opts.HalfLife, DefaultHalfLife),
		forget:   cmp.Or(opts.ForgetAfter, DefaultForgetAfter),
		pools:    map[poolKey]*poolState{},
		tenants:  map[string]*tenantState{},
		keep:     map[*tenantState]bool{},
		groups:   map[*tenantState]*sample{},
	}
	switch {
	case opts.TopN == 0:
		c.topN = DefaultTopN
	case opts.TopN < 0:
		c.topN = 0
	}
	for name, v := range opts.ConstLabels {
		if !labelName.MatchString(name) || strings.HasPrefix(name, "__") || name == "tenant" || name == "state" || name == "reason" {
			return nil, fmt.Errorf("%w: const label name %q", ErrInvalidOptions, name)
		}
		if !utf8.ValidString(v) {
			return nil, fmt.Errorf("%w: const label %s: value is not valid UTF-8", ErrInvalidOptions, name)
		}
	}
	if !utf8.ValidString(c.other) {
		return nil, fmt.Errorf("%w: OtherLabel is not valid UTF-8", ErrInvalidOptions)
	}
	c.d = newDescs(opts.ConstLabels)
	return c, nil
}

// Describe sends the descriptors of every metric the Collector exports to
// ch. It implements prometheus.Collector and cannot fail.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all() {
		ch <- d
	}
}

// Collect takes a tenantpg.Stats snapshot, updates the running totals and
// sends the global and per-tenant metrics to ch. It implements
// prometheus.Collector and cannot fail: a closed connector simply has no
// pools.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	// The snapshot is taken under mu: of two scrapes at once, the one with
	// the older snapshot must not update the totals second, or a counter
	// that went back would count its pool's whole value again.
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats()
	now := c.now()
	named, other := c.update(st, now)
	c.emitGlobal(ch, st)
	for _, t := range named {
		c.emitTenant(ch, t.label, c.groups[t], &t.totals)
	}
	c.emitTenant(ch, c.other, other, &c.others)
}

// poolKey identifies one pool instance: tenantpg closes idle pools and
// creates new ones for the same target, whose pgxpool counters start at 0.
// Pools of tenants routed by schema or setting share a target, so the
// creation time tells them apart; should two of them have been created in
// the same nanosecond, their tenant labels do.
type poolKey struct {
	target  string
	created int64
	label   string // only for pools whose target and creation time collide
}

// poolState is what a pool's counters were at the previous scrape.
type poolState struct {
	last counterSet
	seen bool // scratch: present in this scrape
}

// tenantState is what the collector knows of one tenant label value.
type tenantState struct {
	label    string
	totals   counterSet // running totals while named
	score    float64    // decayed acquires
	scoredAt time.Time
	seenAt   time.Time // last scrape in which it had a pool
	inUse    float64   // scratch: connections in use at this scrape
	live     bool      // scratch: has a pool in this scrape
}

// update folds st into the running totals and returns the named tenants, in
// rank order, and the gauges summed under OtherLabel. Callers hold c.mu.
func (c *Collector) update(st tenantpg.Stats, now time.Time) ([]*tenantState, *sample) {
	clear(c.groups)
	clear(c.keep)
	for _, p := range c.pools {
		p.seen = false
	}
	for _, t := range c.tenants {
		t.live, t.inUse = false, 0
	}
	other := &sample{}
	type grown struct {
		t     *tenantState // nil: the pool has no tenant (rejected)
		delta counterSet
	}
	deltas := make([]grown, 0, len(st.Pools))

	keys := make([]poolKey, len(st.Pools))
	count := make(map[poolKey]int, len(st.Pools))
	for i := range st.Pools {
		keys[i] = poolKey{target: st.Pools[i].Target, created: st.Pools[i].Created.UnixNano()}
		count[keys[i]]++
	}
	for i := range st.Pools {
		ps := &st.Pools[i]
		s := c.sample(ps)
		label := tenantLabel(ps.Tenants)
		k := keys[i]
		if count[k] > 1 {
			k.label = label
		}
		p := c.pools[k]
		if p == nil {
			p = &poolState{}
			c.pools[k] = p
		}
		p.seen = true
		var d counterSet
		for j := range d {
			d[j] = s.counters[j] - p.last[j]
			if d[j] < 0 { // cannot happen for one pool instance; be safe
				d[j] = s.counters[j]
			}
		}
		p.last = s.counters

		var t *tenantState
		if label != "" {
			t = c.tenants[label]
			if t == nil {
				t = &tenantState{label: label, scoredAt: now}
				c.tenants[label] = t
			}
			t.live, t.seenAt = true, now
			t.inUse += s.gauges[gInUse]
			g := c.groups[t]
			if g == nil {
				g = &sample{}
				c.groups[t] = g
			}
			g.add(&s)
		} else {
			other.add(&s)
		}
		deltas = append(deltas, grown{t, d})
	}
	for k, p := range c.pools {
		if !p.seen {
			delete(c.pools, k)
		}
	}

	// Rank the tenants that have a pool now.
	c.ranked = c.ranked[:0]
	for _, d := range deltas {
		if d.t != nil && !c.keep[d.t] {
			c.keep[d.t] = true // here: counted once per tenant
			c.decay(d.t, now)
		}
	}
	for _, d := range deltas {
		if d.t != nil {
			d.t.score += d.delta[cAcquires]
		}
	}
	for t := range c.keep {
		if t.label != c.other {
			c.ranked = append(c.ranked, t)
		}
	}
	clear(c.keep)
	slices.SortFunc(c.ranked, func(a, b *tenantState) int {
		if r := cmp.Compare(b.score+b.inUse, a.score+a.inUse); r != 0 {
			return r
		}
		if r := cmp.Compare(b.inUse, a.inUse); r != 0 {
			return r
		}
		return strings.Compare(a.label, b.label)
	})
	named := c.ranked[:min(c.topN, len(c.ranked))]
	for _, t := range named {
		c.keep[t] = true
	}
	for t, g := range c.groups {
		if !c.keep[t] {
			other.add(g)
		}
	}
	for _, d := range deltas {
		if d.t != nil && c.keep[d.t] {
			d.t.totals.add(&d.delta)
		} else {
			c.others.add(&d.delta)
		}
	}
	for label, t := range c.tenants {
		if !t.live && c.forget > 0 && now.Sub(t.seenAt) > c.forget {
			delete(c.tenants, label)
		}
	}
	return named, other
}

// decay ages t's score to now.
func (c *Collector) decay(t *tenantState, now time.Time) {
	if c.halfLife > 0 {
		if dt := now.Sub(t.scoredAt); dt > 0 {
			t.score *= math.Exp2(-float64(dt) / float64(c.halfLife))
		}
	}
	t.scoredAt = now
}

// tenantLabel is the tenant label value of a pool: its tenant, or for a
// pool shared by several tenants (Config.SharePools) their ids joined by
// commas, at most maxLabelTenants of them. A pool without tenants (rejected,
// waiting to be reaped) has none.
func tenantLabel(ts []string) string {
	switch len(ts) {
	case 0:
		return ""
	case 1:
		return ts[0]
	}
	if len(ts) <= maxLabelTenants {
		return strings.Join(ts, ",")
	}
	return strings.Join(ts[:maxLabelTenants], ",") + ",+" + strconv.Itoa(len(ts)-maxLabelTenants)
}
