package tenantpgprom

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestFiguresWhereTheyAreNotZero drives the global counters away from zero,
// with different values, against the real servers, then checks each metric
// against Stats and against what happened: a metric reading the wrong
// figure cannot pass here, where in the other harness tests most of them
// are 0. So are pgxpool's per-tenant opens and waits.
func TestFiguresWhereTheyAreNotZero(t *testing.T) {
	env := pgtest.Shared(t)
	ids := harnessTenants(t, env, 4)
	db, c := openConnector(t, env, "tenant_max_conns=2", "pool_max_conns=1")
	col, err := New(c, Options{TopN: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tctx := func(id string) context.Context { return tenantpg.WithTenant(ctx, id) }
	query := func(id string, d time.Duration) error {
		qctx, cancel := context.WithTimeout(tctx(id), d)
		defer cancel()
		_, err := db.ExecContext(qctx, "select 1")
		return err
	}
	begin := func(id string) *sql.Tx {
		tx, err := db.BeginTx(tctx(id), nil)
		if err != nil {
			t.Fatal(err)
		}
		return tx
	}

	for range 3 { // checkouts without a tenant
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	if err := query("nosuch", 10*time.Second); !errors.Is(err, tenantpg.ErrTenantRejected) {
		t.Fatalf("unknown login: %v, want a rejection", err)
	}
	tx1 := begin(ids[0]) // t01's only connection; 1 of 2 slots
	if err := query(ids[0], 100*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("t01 with its pool full: %v", err)
	}
	tx2 := begin(ids[1]) // the budget is full
	for range 2 {
		if err := query(ids[2], 100*time.Millisecond); !errors.Is(err, tenantpg.ErrBudgetExhausted) {
			t.Fatalf("t03 with the budget full: %v", err)
		}
	}
	waited := make(chan error, 1)
	go func() { waited <- query(ids[2], 30*time.Second) }()
	for c.Stats().Waiting != 1 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx1.Commit(); err != nil { // handed off to t03
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("t03 after the hand-off: %v", err)
	}
	// Past a tick of the clock that dates pools' last use, so that t03's
	// pool is the least recently used when t04 needs a slot.
	time.Sleep(600 * time.Millisecond)
	if err := tx2.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := query(ids[3], 10*time.Second); err != nil { // evicts t03's idle connection
		t.Fatal(err)
	}
	if err := c.Forget(ctx, ids[3]); err != nil {
		t.Fatal(err)
	}

	st := c.Stats()
	want := map[string]float64{
		"tenantpg_no_tenant_checkouts_total":           3,
		"tenantpg_rejected_tenants":                    1,
		"tenantpg_budget_errors_total":                 2,
		"tenantpg_budget_waits_total":                  3,
		"tenantpg_budget_handed_off_connections_total": 1,
		"tenantpg_budget_evicted_connections_total":    1,
		"tenantpg_tenants_forgotten_total":             1,
		"tenantpg_budget_max_connections":              2,
		"tenantpg_budget_peak_connections":             2,
	}
	s := gather(t, col)
	for _, m := range globalMetrics {
		got, ok := s[m.name][""]
		if !ok {
			t.Errorf("%s missing", m.name)
			continue
		}
		if v := m.value(&st); got != v {
			t.Errorf("%s = %v, Stats says %v", m.name, got, v)
		}
		if w, ok := want[m.name]; ok && got != w {
			t.Errorf("%s = %v, want %v", m.name, got, w)
		}
	}
	// Each of the two waits ends at its 100 ms deadline, timed from a little
	// after the context was made: more than one wait's worth, under 200 ms.
	if w := s["tenantpg_budget_wait_seconds_total"][""]; w < 0.15 {
		t.Errorf("budget wait %vs after two waits of 100 ms", w)
	}
	// t03's and t04's pools came and went between scrapes: the collector
	// never saw their counters, so only t01's and t02's are checked.
	if got := s.tenantValues("tenantpg_tenant_pools"); !got[ids[0]] || !got[ids[1]] || got[ids[2]] || got[ids[3]] {
		t.Errorf("tenants with pools %v, want t01 and t02 (t03 evicted, t04 forgotten)", got)
	}
	if got := s.byTenant("tenantpg_tenant_connection_attempts_total"); got[ids[0]] != 1 || got[ids[1]] != 1 {
		t.Errorf("connection attempts by tenant %v", got)
	}
	if got := s.byTenant("tenantpg_tenant_acquire_waits_total"); got[ids[0]] != 1 || got[ids[1]] != 1 {
		t.Errorf("acquire waits by tenant %v: each pool's first acquire waited for its dial", got)
	}
}

// TestEvictionReasons gives one tenant's pool a short pool_max_conn_idle_time
// and another's a short pool_max_conn_lifetime (through Resolve), and checks
// that pgxpool's closes are counted under the right reason and tenant.
func TestEvictionReasons(t *testing.T) {
	env := pgtest.Shared(t)
	ids := harnessTenants(t, env, 2)
	cfg, err := tenantpg.ParseConfig(env.BouncerURL(env.AppUser, env.AppDatabase) + "&tenant_user={user}.{tenant}")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolve = func(_ context.Context, tenant string, pc *pgxpool.Config) error {
		pc.HealthCheckPeriod = 50 * time.Millisecond
		if tenant == ids[0] {
			pc.MaxConnIdleTime = 100 * time.Millisecond
		} else {
			pc.MaxConnLifetime = 100 * time.Millisecond
			pc.MaxConnLifetimeJitter = 0
		}
		return nil
	}
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, _ := tenantpg.ConnectorOf(db)
	col, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	selectOne(t, ctx, db, ids...)
	// Parked connections go back to pgxpool within a second; its health
	// check then closes them.
	for deadline := time.Now().Add(20 * time.Second); c.Stats().OpenConns != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("connections not closed by pgxpool: %+v", c.Stats())
		}
	}
	ev := gather(t, col)["tenantpg_tenant_evicted_connections_total"]
	for k, want := range map[string]float64{
		"reason=max_idle_time|tenant=" + ids[0]: 1,
		"reason=max_lifetime|tenant=" + ids[0]:  0,
		"reason=max_idle_time|tenant=" + ids[1]: 0,
		"reason=max_lifetime|tenant=" + ids[1]:  1,
	} {
		if ev[k] != want {
			t.Errorf("evicted{%s} = %v, want %v (all: %v)", k, ev[k], want, ev)
		}
	}
}
