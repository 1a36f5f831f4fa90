package tenantpgprom

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/tenantpg/tenantpg"
)

// fakeSource is a connector whose pools the test sets directly.
type fakeSource struct {
	mu     sync.Mutex
	now    time.Time
	global tenantpg.Stats
	pools  []fakePool
}

type fakePool struct {
	target  string
	created time.Time
	tenants []string
	s       sample
}

func (f *fakeSource) stats() tenantpg.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.global
	st.Pools = nil
	for _, p := range f.pools {
		st.Pools = append(st.Pools, tenantpg.PoolStats{Target: p.target, Created: p.created, Tenants: p.tenants})
	}
	return st
}

func (f *fakeSource) byTarget(p *tenantpg.PoolStats) sample {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fp := range f.pools {
		if fp.target == p.Target && fp.created.Equal(p.Created) {
			s := fp.s
			s.gauges[gPools] = 1
			return s
		}
	}
	panic("unknown pool " + p.Target)
}

// set replaces tenant's pool figures; created picks the pool instance.
func (f *fakeSource) set(tenant string, created time.Time, acquires float64, inUse float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s sample
	s.counters[cAcquires] = acquires
	s.counters[cDials] = 1
	s.gauges[gInUse] = inUse
	s.gauges[gOpen] = inUse + 1
	s.gauges[gIdle] = 1
	for i, p := range f.pools {
		if len(p.tenants) == 1 && p.tenants[0] == tenant {
			f.pools[i] = fakePool{target: "app." + tenant + "@h:1/app", created: created, tenants: []string{tenant}, s: s}
			return
		}
	}
	f.pools = append(f.pools, fakePool{target: "app." + tenant + "@h:1/app", created: created, tenants: []string{tenant}, s: s})
}

// drop removes tenant's pool, as the reaper does.
func (f *fakeSource) drop(tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pools = slicesDelete(f.pools, func(p fakePool) bool { return len(p.tenants) == 1 && p.tenants[0] == tenant })
}

func slicesDelete(ps []fakePool, del func(fakePool) bool) []fakePool {
	out := ps[:0]
	for _, p := range ps {
		if !del(p) {
			out = append(out, p)
		}
	}
	return out
}

func (f *fakeSource) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newFake(t *testing.T, opts Options) (*fakeSource, *Collector) {
	t.Helper()
	f := &fakeSource{now: time.Unix(1_700_000_000, 0)}
	c, err := newCollector(f.stats, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.sample = f.byTarget
	c.now = func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.now
	}
	return f, c
}

// series maps metric name to "label=value,..." to value.
type series map[string]map[string]float64

func gather(t *testing.T, c prometheus.Collector) series {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return seriesOf(mfs)
}

func seriesOf(mfs []*dto.MetricFamily) series {
	out := series{}
	for _, mf := range mfs {
		m := map[string]float64{}
		for _, metric := range mf.GetMetric() {
			var ls []string
			for _, l := range metric.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			v := metric.GetGauge().GetValue()
			if metric.Counter != nil {
				v = metric.GetCounter().GetValue()
			}
			m[strings.Join(ls, "|")] = v
		}
		out[mf.GetName()] = m
	}
	return out
}

// tenantValues returns the values of the tenant label of a metric.
func (s series) tenantValues(name string) map[string]bool {
	out := map[string]bool{}
	for k := range s[name] {
		for _, l := range strings.Split(k, "|") {
			if v, ok := strings.CutPrefix(l, "tenant="); ok {
				out[v] = true
			}
		}
	}
	return out
}

// byTenant sums a metric per tenant label value, over its other labels.
func (s series) byTenant(name string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range s[name] {
		for _, l := range strings.Split(k, "|") {
			if t, ok := strings.CutPrefix(l, "tenant="); ok {
				out[t] += v
			}
		}
	}
	return out
}

func sum(m map[string]float64) float64 {
	var n float64
	for _, v := range m {
		n += v
	}
	return n
}

func TestTopNAndOther(t *testing.T) {
	f, c := newFake(t, Options{TopN: 5})
	var want float64
	for i := 1; i <= 30; i++ {
		f.set(fmt.Sprintf("t%02d", i), f.now, float64(10*i), 0)
		want += float64(10 * i)
	}
	s := gather(t, c)
	got := s.tenantValues("tenantpg_tenant_acquires_total")
	wantLabels := map[string]bool{"t26": true, "t27": true, "t28": true, "t29": true, "t30": true, OtherTenant: true}
	if fmt.Sprint(got) != fmt.Sprint(wantLabels) {
		t.Fatalf("tenant labels %v, want %v", got, wantLabels)
	}
	acq := s.byTenant("tenantpg_tenant_acquires_total")
	if acq[OtherTenant] != 10*(25*26/2) || sum(acq) != want {
		t.Fatalf("acquires %v: other %v, total %v, want %v", acq, acq[OtherTenant], sum(acq), want)
	}
	if p := s.byTenant("tenantpg_tenant_pools"); p[OtherTenant] != 25 || p["t30"] != 1 {
		t.Fatalf("pools %v", p)
	}
	if n := s["tenantpg_tenants"][""]; n != 30 {
		t.Fatalf("tenantpg_tenants %v", n)
	}

	// A tenant that becomes the busiest is named; its own series counts
	// from then on.
	f.set("t01", f.now, 400, 3)
	s = gather(t, c)
	if !s.tenantValues("tenantpg_tenant_connections")["t01"] || s.tenantValues("tenantpg_tenant_connections")["t26"] {
		t.Fatalf("t01 not named instead of t26: %v", s.tenantValues("tenantpg_tenant_connections"))
	}
	if got := s["tenantpg_tenant_acquires_total"]["tenant=t01"]; got != 390 {
		t.Fatalf("t01 acquires %v, want 390", got)
	}
	if s["tenantpg_tenant_connections"]["state=in_use|tenant=t01"] != 3 {
		t.Fatalf("in_use %v", s["tenantpg_tenant_connections"])
	}
}

func TestNegativeTopNSumsEverything(t *testing.T) {
	f, c := newFake(t, Options{TopN: -1})
	f.set("a", f.now, 1, 0)
	f.set("b", f.now, 2, 0)
	s := gather(t, c)
	if got := s.byTenant("tenantpg_tenant_acquires_total"); len(got) != 1 || got[OtherTenant] != 3 {
		t.Fatalf("acquires %v", got)
	}
}

func TestCountersStayMonotonic(t *testing.T) {
	f, c := newFake(t, Options{TopN: 1, HalfLife: time.Minute, ForgetAfter: 10 * time.Minute})
	t0 := f.now
	var prev series
	var total float64 // acquires the fake pools made in all
	check := func(step string) series {
		t.Helper()
		s := gather(t, c)
		for name, m := range s {
			if !strings.HasSuffix(name, "_total") || strings.HasPrefix(name, "tenantpg_budget") {
				continue
			}
			for k, v := range m {
				if old, ok := prev[name][k]; ok && v < old {
					t.Fatalf("%s: %s{%s} went from %v to %v", step, name, k, old, v)
				}
			}
		}
		// Every increment went to exactly one running total.
		c.mu.Lock()
		got := c.others[cAcquires]
		for _, ts := range c.tenants {
			got += ts.totals[cAcquires]
		}
		c.mu.Unlock()
		if got != total {
			t.Fatalf("%s: running totals sum to %v, want %v", step, got, total)
		}
		if n := len(s.tenantValues("tenantpg_tenant_acquires_total")); n > 2 {
			t.Fatalf("%s: %d tenant label values with TopN 1", step, n)
		}
		prev = s
		return s
	}

	f.set("a", t0, 100, 0)
	f.set("b", t0, 10, 0)
	total = 110
	s := check("start")
	if s["tenantpg_tenant_acquires_total"]["tenant=a"] != 100 {
		t.Fatalf("a not named: %v", s["tenantpg_tenant_acquires_total"])
	}

	// a's pool is reaped and recreated (its counters restart at 3) while
	// b becomes busier: b is named, a moves to the other label.
	f.advance(10 * time.Second)
	t1 := f.now
	f.set("a", t1, 3, 0)
	f.set("b", t0, 500, 0)
	total += 3 + 490
	s = check("a recreated, b busier")
	if s["tenantpg_tenant_acquires_total"]["tenant=b"] != 490 {
		t.Fatalf("b's own series counts from when it was named: %v", s["tenantpg_tenant_acquires_total"])
	}
	if _, ok := s["tenantpg_tenant_acquires_total"]["tenant=a"]; ok {
		t.Fatal("a still named")
	}

	// b's pool is reaped; a is the only tenant left and is named again,
	// resuming from its earlier total.
	f.advance(10 * time.Second)
	f.drop("b")
	f.set("a", t1, 13, 0)
	total += 10
	s = check("b reaped")
	if s["tenantpg_tenant_acquires_total"]["tenant=a"] != 110 {
		t.Fatalf("a resumed at %v, want 110", s["tenantpg_tenant_acquires_total"]["tenant=a"])
	}

	// b comes back after a minute: its total is still known.
	f.advance(time.Minute)
	f.set("b", f.now, 1000, 0)
	total += 1000
	s = check("b back")
	if s["tenantpg_tenant_acquires_total"]["tenant=b"] != 1490 {
		t.Fatalf("b resumed at %v, want 1490", s["tenantpg_tenant_acquires_total"]["tenant=b"])
	}

	// After ForgetAfter without a pool, a's totals are forgotten.
	f.drop("a")
	check("a reaped")
	f.advance(11 * time.Minute)
	total -= 110 // forgotten
	check("later")
	c.mu.Lock()
	_, kept := c.tenants["a"]
	c.mu.Unlock()
	if kept {
		t.Fatal("a's totals kept after ForgetAfter")
	}
}

func TestRankingDecays(t *testing.T) {
	f, c := newFake(t, Options{TopN: 1, HalfLife: time.Minute})
	t0 := f.now
	f.set("old", t0, 1000, 0)
	f.set("new", t0, 0, 0)
	if s := gather(t, c); !s.tenantValues("tenantpg_tenant_pools")["old"] {
		t.Fatal("old not named first")
	}
	for i := 1; i <= 10; i++ {
		f.advance(time.Minute)
		f.set("new", t0, float64(100*i), 0)
		gather(t, c)
	}
	// old's 1000 acquires have halved ten times; new made 100 a minute.
	if s := gather(t, c); !s.tenantValues("tenantpg_tenant_pools")["new"] {
		t.Fatalf("new not named after 10 half-lives: %v", s.tenantValues("tenantpg_tenant_pools"))
	}
}

func TestSharedAndTenantlessPools(t *testing.T) {
	f, c := newFake(t, Options{TopN: 5})
	var s sample
	s.counters[cAcquires] = 7
	s.counters[cRejections] = 1
	f.pools = append(f.pools,
		fakePool{target: "shared@h:1/app", created: f.now, tenants: []string{"a", "b"}, s: s},
		fakePool{target: "app.nosuch@h:1/app", created: f.now, s: s}, // rejected
	)
	many := make([]string, 10)
	for i := range many {
		many[i] = fmt.Sprintf("m%d", i)
	}
	f.pools = append(f.pools, fakePool{target: "many@h:1/app", created: f.now, tenants: many, s: s})
	got := gather(t, c).byTenant("tenantpg_tenant_rejections_total")
	want := map[string]float64{"a,b": 1, OtherTenant: 1, "m0,m1,m2,m3,m4,m5,m6,m7,+2": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejections %v, want %v", got, want)
	}
}

func TestOtherLabelCollision(t *testing.T) {
	f, c := newFake(t, Options{TopN: 5, OtherLabel: "rest"})
	f.set("rest", f.now, 5, 0)
	f.set("x", f.now, 1, 0)
	got := gather(t, c).byTenant("tenantpg_tenant_acquires_total")
	if fmt.Sprint(got) != fmt.Sprint(map[string]float64{"rest": 5, "x": 1}) {
		t.Fatalf("acquires %v", got)
	}
}

func TestLint(t *testing.T) {
	f, c := newFake(t, Options{ConstLabels: prometheus.Labels{"db": "orders"}})
	f.set("a", f.now, 1, 1)
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	s := gather(t, c)
	if _, ok := s["tenantpg_budget_open_connections"]["db=orders"]; !ok {
		t.Fatalf("const label missing: %v", s["tenantpg_budget_open_connections"])
	}
}

func TestDescribeMatchesCollect(t *testing.T) {
	f, c := newFake(t, Options{})
	f.set("a", f.now, 1, 0)
	descs := map[string]bool{}
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		descs[d.String()] = true
	}
	seen := map[string]bool{}
	mch := make(chan prometheus.Metric)
	go func() { c.Collect(mch); close(mch) }()
	for m := range mch {
		if !descs[m.Desc().String()] {
			t.Errorf("collected %s, not described", m.Desc())
		}
		seen[m.Desc().String()] = true
	}
	if len(seen) != len(descs) {
		t.Fatalf("%d descriptors, %d collected", len(descs), len(seen))
	}
}

func TestConcurrentCollect(t *testing.T) {
	f, c := newFake(t, Options{TopN: 3})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				f.set(fmt.Sprintf("g%d", g), f.now, float64(i), 0)
				if n := testutil.CollectAndCount(c, "tenantpg_tenant_acquires_total"); n < 1 || n > 4 {
					t.Errorf("%d acquire series", n)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestOptionsErrors(t *testing.T) {
	if _, err := New(nil, Options{}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("New(nil) = %v", err)
	}
	for _, l := range []prometheus.Labels{{"tenant": "x"}, {"1x": "y"}, {"__x": "y"}, {"ok": "\xff"}} {
		if _, err := newCollector(func() tenantpg.Stats { return tenantpg.Stats{} }, Options{ConstLabels: l}); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("ConstLabels %v: %v", l, err)
		}
	}
	if _, err := NewDB(sql.OpenDB(dummyConnector{}), Options{}); !errors.Is(err, tenantpg.ErrNotTenantpg) {
		t.Fatalf("NewDB(other driver) = %v", err)
	}
	if _, err := NewDB(nil, Options{}); !errors.Is(err, tenantpg.ErrNotTenantpg) {
		t.Fatalf("NewDB(nil) = %v", err)
	}
}

type dummyConnector struct{}

func (dummyConnector) Connect(context.Context) (driver.Conn, error) { return nil, errors.New("no") }
func (dummyConnector) Driver() driver.Driver                        { return nil }

// labelNames returns the sorted label names of a series key of seriesOf.
func labelNames(key string) string {
	var names []string
	for _, l := range strings.Split(key, "|") {
		name, _, _ := strings.Cut(l, "=")
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func TestPoolsWithTheSameTargetAndCreationTime(t *testing.T) {
	// Schema routing: every tenant's pool has the same target.
	f, c := newFake(t, Options{TopN: 5})
	for i, id := range []string{"a", "b"} {
		var s sample
		s.counters[cAcquires] = float64(10 * (i + 1))
		f.pools = append(f.pools, fakePool{target: "app@h:1/app", created: f.now, tenants: []string{id}, s: s})
	}
	c.sample = func(p *tenantpg.PoolStats) sample {
		for _, fp := range f.pools {
			if fp.tenants[0] == p.Tenants[0] {
				return fp.s
			}
		}
		panic("unknown pool")
	}
	for range 3 {
		got := gather(t, c).byTenant("tenantpg_tenant_acquires_total")
		if got["a"] != 10 || got["b"] != 20 {
			t.Fatalf("acquires %v", got)
		}
	}
}

// TestOverlappingScrapes: two scrapes at once, the first holding an older
// snapshot while the second runs. The totals end at the true value; before
// the snapshot was taken under the collector's lock, the older snapshot
// updated second and the counter jumped by the pool's whole value (200
// became 400).
func TestOverlappingScrapes(t *testing.T) {
	created := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	checkouts, first := int64(100), true
	took, gate := make(chan struct{}), make(chan struct{})
	stats := func() tenantpg.Stats {
		mu.Lock()
		v, block := checkouts, first
		first = false
		mu.Unlock()
		if block {
			close(took)
			<-gate // scrape A holds its snapshot of 100 while scrape B starts
		}
		return tenantpg.Stats{Pools: []tenantpg.PoolStats{{Target: "a@h:1/db", Created: created, Tenants: []string{"a"}, Checkouts: v}}}
	}
	c, err := newCollector(stats, Options{})
	if err != nil {
		t.Fatal(err)
	}
	acquires := func() float64 { return gather(t, c)["tenantpg_tenant_acquires_total"]["tenant=a"] }
	a := make(chan float64)
	go func() { a <- acquires() }()
	<-took
	mu.Lock()
	checkouts = 200
	mu.Unlock()
	b := make(chan float64)
	go func() { b <- acquires() }()
	time.Sleep(20 * time.Millisecond) // let B reach the collector
	close(gate)
	va, vb := <-a, <-b
	if last := acquires(); last != 200 || max(va, vb) > 200 {
		t.Fatalf("acquires_total %v and %v from the overlapping scrapes, then %v; true value 200", va, vb, last)
	}
}
