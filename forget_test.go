package tenantpg

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// inUse enters tenant's pool the way a checkout does and keeps it entered
// (a connection being obtained) until the returned func is called.
func inUse(t *testing.T, c *Connector, tenant string) (*poolEntry, func()) {
	t.Helper()
	e, _, err := c.set.enterGen(context.Background(), tenant)
	if err != nil {
		t.Fatal(err)
	}
	return e, func() { e.inflight.Add(-1) }
}

func forgetWithin(c *Connector, tenant string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.Forget(ctx, tenant)
}

// A pool in use when Forget runs stays open until it is not; Forget waits
// for it, and so does a Forget called again after one that gave up, which
// finds the tenant unmapped already.
func TestForgetWaitsForItsPoolsAcrossCalls(t *testing.T) {
	c := offlineConnector(t)
	e, done := inUse(t, c, "a")
	for i := range 2 {
		if err := forgetWithin(c, "a", 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Forget %d with the pool in use: %v, want the context's error", i+1, err)
		}
	}
	if c.set.lookup("a") != nil {
		t.Fatal("the tenant is still mapped")
	}
	if e.isClosed() {
		t.Fatal("the pool was closed while in use")
	}
	done()
	if err := forgetWithin(c, "a", 5*time.Second); err != nil {
		t.Fatalf("Forget once the pool is unused: %v", err)
	}
	if !e.isClosed() {
		t.Fatal("Forget returned before the pool was closed")
	}
	if err := forgetWithin(c, "never-seen", time.Second); err != nil {
		t.Fatalf("Forget of a tenant without a pool: %v", err)
	}
	// Three Forgets of a, one of them unmapped it; none unmapped never-seen.
	if st := c.Stats(); st.PoolsReaped != 1 || len(st.Pools) != 0 || st.Forgotten != 1 {
		t.Fatalf("%d pools reaped, %d left, %d tenants forgotten", st.PoolsReaped, len(st.Pools), st.Forgotten)
	}
	c.set.reap(c.clock.read(), 0)
	c.set.mu.RLock()
	n := len(c.set.forgotten)
	c.set.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d tenants' closed pools still remembered after a reaper tick", n)
	}
}

// A resolve under way when Forget runs may have Resolve's old answer; it
// must ask again rather than map the tenant to it.
func TestForgetMakesAResolveUnderWayAskAgain(t *testing.T) {
	base, err := pgxpool.ParseConfig("postgres://app@127.0.0.1:1/app")
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	c, err := NewConnector(&Config{Pool: base, Resolve: func(_ context.Context, tenant string, pc *pgxpool.Config) error {
		n := calls.Add(1)
		pc.ConnConfig.User = "app_" + tenant
		pc.ConnConfig.RuntimeParams["application_name"] = map[int32]string{1: "old", 2: "new"}[n]
		if n == 1 {
			close(entered)
			<-release
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan *poolEntry, 1)
	go func() {
		e, _, err := c.set.enterGen(context.Background(), "a")
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		e.inflight.Add(-1)
		got <- e
	}()
	<-entered
	if err := forgetWithin(c, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	close(release)
	e := <-got
	if e == nil {
		return
	}
	if app := e.pool.Config().ConnConfig.RuntimeParams["application_name"]; app != "new" || calls.Load() != 2 {
		t.Fatalf("mapped to Resolve's answer %q after %d calls, want the one after Forget", app, calls.Load())
	}
}

// A dial that began before Forget and is rejected after it tells nothing
// about the tenant's target now: it must not be cached. A rejection by the
// pool the tenant maps to is cached, and unmaps it.
func TestRejectionOfAForgottenPoolIsNotCached(t *testing.T) {
	c := offlineConnector(t)
	e, done := inUse(t, c, "a")
	defer done()
	cause := errors.New("password authentication failed")
	if err := forgetWithin(c, "a", 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Forget with the pool in use: %v", err)
	}
	if re := c.set.reject("a", e, cause); re.Until.After(time.Now()) || !errors.Is(re, cause) {
		t.Fatalf("reject returned %+v, which says the tenant fails fast until %v", re, re.Until)
	}
	if err := c.rejects.get("a"); err != nil {
		t.Fatalf("a rejection by the forgotten pool was cached: %v", err)
	}

	e2, done2 := inUse(t, c, "a") // mapped again (to the same target: the same pool)
	defer done2()
	c.set.reject("a", e2, cause)
	if err := c.rejects.get("a"); !errors.Is(err, ErrTenantRejected) {
		t.Fatalf("a rejection by the tenant's pool: cached %v", err)
	}
	if c.set.lookup("a") != nil {
		t.Fatal("the rejected tenant is still mapped")
	}
}

// A tenant that resolves to the same target while Forget waits for its old
// pool maps back to that pool, which then stays open: Forget stops waiting
// for it. Forgetting it again and again remembers the pool once.
func TestForgetStopsWaitingForAPoolMappedBack(t *testing.T) {
	c := offlineConnector(t)
	e, done := inUse(t, c, "a")
	defer done()
	res := make(chan error, 1)
	go func() { res <- forgetWithin(c, "a", 10*time.Second) }()
	waitFor(t, func() bool { return c.set.lookup("a") == nil }) // Forget unmapped it and waits
	again, doneAgain := inUse(t, c, "a")                        // the same answer from the templates
	defer doneAgain()
	if again != e {
		t.Fatal("the tenant did not map back to its pool")
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Forget: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Forget still waits for a pool that serves the tenant again")
	}
	if e.isClosed() {
		t.Fatal("a pool serving the tenant was closed")
	}
	for range 5 {
		_, d := inUse(t, c, "a")
		_ = forgetWithin(c, "a", 10*time.Millisecond)
		d()
	}
	c.set.mu.RLock()
	n := len(c.set.forgotten["a"])
	c.set.mu.RUnlock()
	if n != 1 {
		t.Fatalf("one pool remembered %d times", n)
	}
	if got := c.Stats().Forgotten; got != 6 {
		t.Fatalf("Stats.Forgotten %d after 6 Forgets of a mapped tenant", got)
	}
}
