package tenantpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	_ driver.Connector     = (*Connector)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

func TestSQLOpenRejectsBadDSN(t *testing.T) {
	_, err := sql.Open(DriverName, "postgres://app@localhost/app")
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("sql.Open without a rewrite = %v, want ErrInvalidConfig", err)
	}
}

func TestDriverOpenHasNoTenant(t *testing.T) {
	_, err := (&Driver{}).Open("postgres://app@localhost/app?tenant_user={tenant}")
	if !errors.Is(err, ErrNoTenant) {
		t.Fatalf("Driver.Open = %v, want ErrNoTenant", err)
	}
}

func TestConnectorOf(t *testing.T) {
	db, err := sql.Open(DriverName, "postgres://app@127.0.0.1:1/app?tenant_user={user}.{tenant}")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := ConnectorOf(db)
	if err != nil || c == nil {
		t.Fatalf("ConnectorOf = %v, %v", c, err)
	}
	if _, err := Pool(context.Background(), db); !errors.Is(err, ErrNoTenant) {
		t.Fatalf("Pool without tenant = %v", err)
	}
	pool, err := Pool(WithTenant(context.Background(), "acme"), db)
	if err != nil || pool.Config().ConnConfig.User != "app.acme" {
		t.Fatalf("Pool(acme) = %v, %v", pool, err)
	}
	// Two tenants with the same target share one pool; here they differ.
	p2, _ := c.Pool(context.Background(), "globex")
	if p2 == pool {
		t.Fatal("different tenants share a pool")
	}
	if st := c.Stats(); len(st.Pools) != 2 || st.Dials != 0 {
		t.Fatalf("stats %+v", st)
	}

	other := sql.OpenDB(fakeConnector{})
	defer other.Close()
	if _, err := ConnectorOf(other); !errors.Is(err, ErrNotTenantpg) {
		t.Fatalf("ConnectorOf(other) = %v", err)
	}
	if _, err := DBStats(other); !errors.Is(err, ErrNotTenantpg) {
		t.Fatalf("DBStats(other) = %v", err)
	}
}

func TestTenantsSharingATargetShareAPool(t *testing.T) {
	cfg, err := ParseConfig("postgres://app@127.0.0.1:1/app?tenant_pattern=[a-z]+")
	if err == nil {
		t.Fatal("config without rewrite accepted")
	}
	cfg, err = ParseConfig("postgres://app@127.0.0.1:1/app?tenant_user={tenant}")
	if err != nil {
		t.Fatal(err)
	}
	// Route two tenants to the same login.
	cfg.SharePools = true
	cfg.Resolve = func(_ context.Context, tenant string, pc *pgxpool.Config) error {
		if tenant == "b" {
			pc.ConnConfig.User = "a"
		}
		return nil
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pa, _ := c.Pool(context.Background(), "a")
	pb, _ := c.Pool(context.Background(), "b")
	if pa != pb {
		t.Fatal("tenants with the same target got different pools")
	}
	st := c.Stats()
	if len(st.Pools) != 1 || len(st.Pools[0].Tenants) != 2 {
		t.Fatalf("stats %+v", st.Pools)
	}

	// Without SharePools, a resolver's per-tenant hooks are never shared.
	cfg.SharePools = false
	c2, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	pa, _ = c2.Pool(context.Background(), "a")
	pb, _ = c2.Pool(context.Background(), "b")
	if pa == pb {
		t.Fatal("tenants share a pool without SharePools")
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	cfg, _ := ParseConfig("postgres://app@127.0.0.1:1/app?tenant_user={tenant}")
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pool(context.Background(), "a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Pool after Close = %v", err)
	}
	if _, err := c.Connect(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("tenant-less Connect after Close = %v", err)
	}
}

type fakeConnector struct{}

func (fakeConnector) Connect(context.Context) (driver.Conn, error) { return nil, errors.New("fake") }
func (fakeConnector) Driver() driver.Driver                        { return fakeDriver{} }

type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) { return nil, errors.New("fake") }

func TestReapCompactsMaps(t *testing.T) {
	c := offlineConnector(t)
	const n = 3 * compactMin
	for i := 0; i < n; i++ {
		if _, err := c.Pool(context.Background(), fmt.Sprintf("t%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(c.Stats().Pools); got != n {
		t.Fatalf("%d pools, want %d", got, n)
	}
	// Everything is idle an hour later.
	reaped := c.set.reap(c.clock.read()+int64(2*time.Hour), time.Hour)
	c.closers.Wait()
	if reaped != n || len(c.Stats().Pools) != 0 || c.Stats().PoolsReaped != n {
		t.Fatalf("reaped %d of %d", reaped, n)
	}
	c.set.mu.RLock()
	peak := c.set.peak
	c.set.mu.RUnlock()
	if peak != 0 {
		t.Fatalf("maps not compacted: peak %d", peak)
	}
}

// A checkout enters a pool without poolSet's lock; a pool the reaper
// removes between that lookup and the caller's use must not be returned.
func TestReapNeverRemovesAnEnteredPool(t *testing.T) {
	c := offlineConnector(t)
	removed := func(e *poolEntry) bool {
		c.set.mu.RLock()
		defer c.set.mu.RUnlock()
		return e.removed
	}
	first, _, err := c.set.enterGen(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	first.inflight.Add(-1)
	// The reaper runs right after the next lookup found the pool: an hour
	// later, so that everything is idle.
	reaped := 0
	testHookEntered = func() {
		testHookEntered = nil
		reaped = c.set.reap(c.clock.read()+int64(2*time.Hour), time.Hour)
	}
	defer func() { testHookEntered = nil }()
	e, _, err := c.set.enterGen(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer e.inflight.Add(-1)
	c.closers.Wait()
	if reaped != 1 || !removed(first) {
		t.Fatalf("the reaper closed %d pools; the race was not exercised", reaped)
	}
	if e == first || removed(e) {
		t.Fatal("enterGen returned the pool the reaper removed")
	}
}

// A tenant unmapped between enterGen's lookup without the lock and its read
// of mapGen must not get the entry with the new generation: its handle
// would keep a shortcut to a pool that no longer serves it.
func TestEnterAfterUnmapMapsAgain(t *testing.T) {
	c := offlineConnector(t)
	first, _, err := c.set.enterGen(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	first.inflight.Add(-1)
	testHookEntered = func() {
		testHookEntered = nil
		c.set.mu.Lock()
		c.set.unmapLocked("a", first)
		c.set.mu.Unlock()
	}
	defer func() { testHookEntered = nil }()
	e, gen, err := c.set.enterGen(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer e.inflight.Add(-1)
	c.set.mu.RLock()
	mapped := c.set.tenants["a"] == e
	c.set.mu.RUnlock()
	if !mapped || gen != e.mapGen.Load() {
		t.Fatalf("enterGen returned an entry the tenant is not mapped to (mapped %v, gen %d of %d)", mapped, gen, e.mapGen.Load())
	}
}

// offlineConnector returns a Connector whose pools point at a closed port:
// pgxpool connects lazily, so entries, mapping and reaping work without a
// server.
func offlineConnector(t *testing.T) *Connector {
	t.Helper()
	return offlineConnectorWith(t, "&tenant_pool_idle=1h")
}

// offlineConnectorWith is offlineConnector with other DSN parameters.
func offlineConnectorWith(t *testing.T, params string) *Connector {
	t.Helper()
	cfg, err := ParseConfig("postgres://app@127.0.0.1:1/app?tenant_user={user}.{tenant}" + params)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The coarse clock times parking, holdMax and idleness; the reaper's work
// can stall (giving a connection back may close it), and the clock must
// advance meanwhile.
func TestClockAdvancesWhileReapWorkStalls(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	testHookReapWork = func() { once.Do(func() { close(entered); <-release }) }
	// Cleanups run last first: the hook goes after the connector's Close
	// (or at once if the connector fails to open), and the work is
	// unblocked before Close, which waits for it.
	t.Cleanup(func() { testHookReapWork = nil })
	c := offlineConnectorWith(t, "&tenant_pool_idle=200ms") // a tick every 50 ms
	t.Cleanup(unblock)
	<-entered
	before := c.clock.read()
	time.Sleep(300 * time.Millisecond)
	after := c.clock.read()
	unblock()
	if d := time.Duration(after - before); d < 150*time.Millisecond {
		t.Errorf("the clock advanced %s in 300 ms while the reaper's work was stalled", d)
	}
}
