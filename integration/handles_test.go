package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestHandlesReuseTenantConnections alternates two tenants on one *sql.DB
// with database/sql's idle pool on: every query lands on its own tenant,
// the idle handles hold no connection, and each tenant's single connection
// is parked and reused instead of dialed again.
func TestHandlesReuseTenantConnections(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 2)
	db := directUserDB(t, env)
	db.SetMaxIdleConns(4)
	ctx := testCtx(t)
	for i := range 200 {
		id := ids[i%2]
		user, err := queryString(tenantpg.WithTenant(ctx, id), db, "select current_user")
		if err != nil {
			t.Fatal(err)
		}
		if user != "app."+id {
			t.Fatalf("query %d for %s ran as %s", i, id, user)
		}
	}
	st := stats(t, db)
	if st.Dials != 2 {
		t.Errorf("dials = %d, want 2 (one per tenant, then reuse)", st.Dials)
	}
	for _, id := range ids {
		p, ok := st.Tenant(id)
		if !ok {
			t.Fatalf("no pool for %s", id)
		}
		if p.Checkouts != 100 || p.OpenConns != 1 {
			t.Errorf("%s: %d checkouts, %d connections; want 100 and 1", id, p.Checkouts, p.OpenConns)
		}
		if p.Parked+int(p.Pool.IdleConns()) != 1 || int(p.Pool.AcquiredConns()) != p.Parked {
			t.Errorf("%s: parked %d, pgxpool idle %d, acquired %d: want its connection parked or idle, none in use",
				id, p.Parked, p.Pool.IdleConns(), p.Pool.AcquiredConns())
		}
	}
}

// TestStmtFollowsCheckoutTenant prepares a *sql.Stmt under one tenant and
// runs it under others: database/sql keeps the statement with a handle
// across checkouts, and each execution must run on the connection of its
// own ctx's tenant.
func TestStmtFollowsCheckoutTenant(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 3)
	db := directUserDB(t, env)
	db.SetMaxIdleConns(2)
	ctx := testCtx(t)
	stmt, err := db.PrepareContext(tenantpg.WithTenant(ctx, ids[0]), "select current_user || ':' || $1::text")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for i := range 90 {
		id := ids[i%3]
		var got string
		if err := stmt.QueryRowContext(tenantpg.WithTenant(ctx, id), id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := "app." + id + ":" + id; got != want {
			t.Fatalf("execution %d: got %q, want %q", i, got, want)
		}
	}
	// In a transaction too.
	tx, err := db.BeginTx(tenantpg.WithTenant(ctx, ids[2]), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := tx.StmtContext(ctx, stmt).QueryRowContext(ctx, "tx").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := "app." + ids[2] + ":tx"; got != want {
		t.Fatalf("in tx: got %q, want %q", got, want)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestParkingYieldsToBlockedAcquirer fills a tenant's pool
// (pool_max_conns=2) with a database/sql session and a pgx-native
// connection from tenantpg.Pool, and queues a query behind them inside
// pgxpool: when the session ends, its connection must go to that query, not
// be parked where the query cannot see it.
func TestParkingYieldsToBlockedAcquirer(t *testing.T) {
	db, conn, ctx := heldSession(t, 2)
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	native, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer native.Release()
	waitQueued(t, db, conn, func(p tenantpg.PoolStats) bool { return p.Acquiring > 0 })
}

// TestWaiterGetsReleasedConnection queues a query behind a session that
// holds its tenant's only connection (pool_max_conns=1): tenantpg holds all
// of the pool's connections, so the query waits for the session's, and gets
// it when the session ends.
func TestWaiterGetsReleasedConnection(t *testing.T) {
	db, conn, ctx := heldSession(t, 1)
	waitQueued(t, db, conn, func(p tenantpg.PoolStats) bool { return p.Acquiring > 0 })
	tenant, _ := tenantpg.TenantFromContext(ctx)
	if p, _ := stats(t, db).Tenant(tenant); p.Pool.AcquireCount() != 1 {
		t.Errorf("pgxpool acquires = %d, want 1: the waiting query got the session's connection directly", p.Pool.AcquireCount())
	}
}

// heldSession opens a *sql.DB whose tenant pools hold maxConns connections
// and a session of one tenant that holds one of them; it returns the
// tenant's ctx. The session is closed after the test if not before.
func heldSession(t *testing.T, maxConns int) (*sql.DB, *sql.Conn, context.Context) {
	t.Helper()
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	db := directUserDB(t, env, fmt.Sprintf("pool_max_conns=%d", maxConns))
	db.SetMaxIdleConns(4)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	return db, conn, ctx
}

// waitQueued starts a query on db with conn's tenant, waits until queued
// reports it waiting, closes conn and requires the query to finish within
// 500 ms of that.
func waitQueued(t *testing.T, db *sql.DB, conn *sql.Conn, queued func(tenantpg.PoolStats) bool) {
	t.Helper()
	var tenant string
	if err := conn.Raw(func(dc any) error { tenant = dc.(*tenantpg.Conn).Tenant(); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := tenantpg.WithTenant(testCtx(t), tenant)
	done := make(chan error, 1)
	go func() {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := queryString(qctx, db, "select current_user")
		done <- err
	}()
	start := time.Now()
	for {
		p, _ := stats(t, db).Tenant(tenant)
		if queued(p) {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the query never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	released := time.Now()
	conn.Close()
	if err := <-done; err != nil {
		t.Fatalf("queued query: %v", err)
	}
	if d := time.Since(released); d > 500*time.Millisecond {
		t.Fatalf("queued query finished %s after the release; the connection was parked out of its reach", d)
	}
}

// TestParkedConnectionsReturnToPgxpool checks that a connection parked for
// longer than a second goes back to pgxpool, whose lifetime, idle-time and
// health rules then apply to it.
func TestParkedConnectionsReturnToPgxpool(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	db := directUserDB(t, env)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	if _, err := queryString(ctx, db, "select current_user"); err != nil {
		t.Fatal(err)
	}
	p, _ := stats(t, db).Tenant(ids[0])
	if p.Parked != 1 {
		t.Fatalf("parked = %d right after the query, want 1", p.Parked)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, _ = stats(t, db).Tenant(ids[0])
		if p.Parked == 0 && p.Pool.IdleConns() == 1 && p.Pool.AcquiredConns() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: parked %d, pgxpool idle %d, acquired %d", p.Parked, p.Pool.IdleConns(), p.Pool.AcquiredConns())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The next checkout takes it from pgxpool: no new dial.
	if _, err := queryString(ctx, db, "select current_user"); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, db); st.Dials != 1 {
		t.Fatalf("dials = %d, want 1", st.Dials)
	}
}

// TestBusyConnectionStaysParked is the other side of
// TestParkedConnectionsReturnToPgxpool: a connection used every 100 ms for
// three seconds, longer than a connection stays parked unused, never goes
// back to pgxpool, and its pool, used only through the handle's shortcut
// (no tenant lookup), is not reaped as idle with tenant_pool_idle=1s.
func TestBusyConnectionStaysParked(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	db := directUserDB(t, env, "tenant_pool_idle=1s")
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := queryString(ctx, db, "select current_user"); err != nil {
			t.Fatal(err)
		}
	}
	st := stats(t, db)
	p, ok := st.Tenant(ids[0])
	if !ok || st.PoolsReaped != 0 {
		t.Fatalf("pool of the busy tenant reaped (%d reaped)", st.PoolsReaped)
	}
	if acq := p.Pool.AcquireCount(); acq != 1 || p.Checkouts < 20 {
		t.Fatalf("pgxpool acquires = %d over %d checkouts, want 1: a connection in use every 100 ms went back to pgxpool", acq, p.Checkouts)
	}
}

// TestContendedPoolHandsOverDirectly runs 8 workers on one tenant whose pool
// holds one connection: a checkout that finds tenantpg holding it waits for
// it, and the handle that gives it back hands it over directly, without a
// round through pgxpool (which would allocate a new *stdlib.Conn per
// checkout).
func TestContendedPoolHandsOverDirectly(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	db := directUserDB(t, env, "pool_max_conns=1")
	db.SetMaxIdleConns(16)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	const workers, each = 8, 100
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range each {
				user, err := queryString(ctx, db, "select current_user")
				if err == nil && user != "app."+ids[0] {
					err = fmt.Errorf("ran as %s", user)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st := stats(t, db)
	p, _ := st.Tenant(ids[0])
	if st.Dials != 1 || p.Checkouts != workers*each {
		t.Fatalf("dials %d, checkouts %d; want 1 and %d", st.Dials, p.Checkouts, workers*each)
	}
	if acq := p.Pool.AcquireCount(); acq > workers*each/10 {
		t.Errorf("pgxpool acquires = %d for %d checkouts: hand-overs went through pgxpool", acq, p.Checkouts)
	}
	t.Logf("%d checkouts, %d pgxpool acquires", p.Checkouts, p.Pool.AcquireCount())
}

// TestRejectedTenantLosesHandleShortcut: a handle claims the connection it
// held last without looking its tenant up, but not once the tenant has been
// rejected since. The tenant's role loses LOGIN while one of its sessions
// holds a connection; a second session's login is rejected, which unmaps
// the tenant; the held connection is then parked. The next query for the
// tenant, on an idle handle that remembers that connection, must fail with
// the cached *RejectedError as before the shortcut existed, not run on the
// parked connection.
func TestRejectedTenantLosesHandleShortcut(t *testing.T) {
	env := pgtest.Shared(t)
	ctx := testCtx(t)
	const id = "revoked1"
	if err := env.Provision(ctx, id); err != nil {
		t.Fatal(err)
	}
	// superConn closes admin in a cleanup, and cleanups run last in, first
	// out: LOGIN comes back before admin closes (a deferred Close ran before
	// any cleanup and left the role NOLOGIN for the next run, go test
	// -count=2).
	admin := superConn(t, env)
	role := pgx.Identifier{"app." + id}.Sanitize()
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "alter role "+role+" login"); err != nil {
			t.Errorf("restoring LOGIN: %v", err)
		}
	})

	db := directUserDB(t, env, "pool_max_conns=2", "tenant_pool_idle=1h", "tenant_reject_ttl=1h")
	db.SetMaxIdleConns(4)
	tctx := tenantpg.WithTenant(ctx, id)
	held, err := db.Conn(tctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.ExecContext(tctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "alter role "+role+" nologin"); err != nil {
		t.Fatal(err)
	}
	_, err = db.ExecContext(tctx, "select 1") // needs a second login
	var re *tenantpg.RejectedError
	if !errors.As(err, &re) {
		t.Fatalf("second session: %v, want a *RejectedError", err)
	}
	held.Close() // parks the connection; its handle goes idle remembering it
	for i := range 4 {
		_, err = db.ExecContext(tctx, "select 1")
		if !errors.As(err, &re) {
			t.Fatalf("query %d after the rejection: %v, want the cached *RejectedError", i, err)
		}
	}
}

// TestIdleHandlesDoNotRetainReapedPools: an idle handle remembers the
// connection it held last, but once that connection has gone back to
// pgxpool and its pool has been reaped, the handle must not keep the
// pool's memory alive (10,000 tenants through a handful of handles would
// otherwise hold a dead pool each).
func TestIdleHandlesDoNotRetainReapedPools(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	db := directUserDB(t, env, "tenant_pool_idle=200ms")
	db.SetMaxIdleConns(4)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	if _, err := db.ExecContext(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	wp := weak.Make(pool)
	pool = nil
	deadline := time.Now().Add(10 * time.Second)
	for len(stats(t, db).Pools) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("pool not reaped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for wp.Value() != nil {
		if time.Now().After(deadline) {
			t.Fatal("a reaped pool is still reachable (from an idle handle?)")
		}
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	if st := db.Stats(); st.Idle == 0 {
		t.Fatalf("no idle handle left (%+v): the check above proved nothing", st)
	}
}

// TestSetMaxOpenConns caps database/sql's handles while many goroutines
// query several tenants. With callers queued, database/sql opens handles in
// its background opener with a context of its own (here: whenever
// SetConnMaxLifetime retires one) and hands them to queued callers without
// ResetSession; each such checkout must bind at its first operation to the
// tenant of that operation's context. Every query must run as its tenant,
// and every connection must come back afterwards.
func TestSetMaxOpenConns(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 3)
	db := directUserDB(t, env)
	db.SetMaxOpenConns(2)
	db.SetConnMaxLifetime(time.Millisecond) // handles retire often: the opener makes their successors
	ctx := testCtx(t)
	const workers, perWorker = 8, 60
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range perWorker {
				id := ids[(w+i)%len(ids)]
				tctx := tenantpg.WithTenant(ctx, id)
				var user string
				var err error
				switch i % 4 {
				case 0:
					user, err = queryString(tctx, db, "select current_user")
				case 1: // a *sql.Conn: the checkout has the tenant, the handle may not yet
					var conn *sql.Conn
					if conn, err = db.Conn(tctx); err == nil {
						user, err = queryString(tctx, conn, "select current_user")
						conn.Close()
					}
				case 2:
					var tx *sql.Tx
					if tx, err = db.BeginTx(tctx, nil); err == nil {
						user, err = queryString(tctx, tx, "select current_user")
						tx.Rollback()
					}
				case 3: // pgx-native inside Raw
					var conn *sql.Conn
					if conn, err = db.Conn(tctx); err == nil {
						err = conn.Raw(func(dc any) error {
							pc, err := dc.(*tenantpg.Conn).ConnContext(tctx)
							if err != nil {
								return err
							}
							return pc.QueryRow(tctx, "select current_user").Scan(&user)
						})
						conn.Close()
					}
				}
				if err == nil && user != "app."+id {
					err = fmt.Errorf("worker %d query %d for %s ran as %s", w, i, id, user)
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d query %d for %s: %w", w, i, id, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if ds := db.Stats(); ds.WaitCount == 0 || ds.MaxLifetimeClosed == 0 {
		t.Fatalf("handles: %d waits, %d retired by lifetime; want both (the opener's path)", ds.WaitCount, ds.MaxLifetimeClosed)
	}
	// Every connection came back: parked or in pgxpool, none checked out.
	for _, p := range stats(t, db).Pools {
		if int(p.Pool.AcquiredConns()) != p.Parked {
			t.Errorf("%v: %d acquired from pgxpool, %d parked: a checkout kept a connection", p.Tenants, p.Pool.AcquiredConns(), p.Parked)
		}
	}
}

// TestStmtPrepareChecksQuery: a *sql.Stmt keeps nothing on the server, but
// Prepare still checks the query on the tenant's connection (a syntax error
// fails there), NumInput still makes database/sql count arguments, and an
// empty query can be prepared twice on one connection, directly and
// through PgBouncer 1.18 in transaction mode.
func TestStmtPrepareChecksQuery(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	for name, base := range map[string]string{
		"direct":    env.DirectURL(env.AppUser, env.AppDatabase),
		"PgBouncer": env.BouncerURL(env.AppUser, env.AppDatabase),
	} {
		t.Run(name, func(t *testing.T) {
			db := open(t, withParams(base, "tenant_user={user}.{tenant}", "pool_max_conns=1"))
			ctx := tenantpg.WithTenant(testCtx(t), ids[0])
			_, err := db.PrepareContext(ctx, "selec 1")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
				t.Fatalf("Prepare of a syntax error: %v, want SQLSTATE 42601", err)
			}
			st, err := db.PrepareContext(ctx, "select $1::int + $2::int")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.ExecContext(ctx, 1); err == nil || !strings.Contains(err.Error(), "expected 2 arguments, got 1") {
				t.Fatalf("one argument for two: %v, want database/sql's argument count error", err)
			}
			var n int
			if err := st.QueryRowContext(ctx, 2, 3).Scan(&n); err != nil || n != 5 {
				t.Fatalf("2 + 3 = %d, %v", n, err)
			}
			for i := range 2 { // one connection: the second would collide with a named statement the first left
				e, err := db.PrepareContext(ctx, "")
				if err != nil {
					t.Fatalf("empty query, preparation %d: %v", i+1, err)
				}
				e.Close()
			}
		})
	}
}
