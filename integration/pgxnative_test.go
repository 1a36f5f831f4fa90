package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// copyMark marks the rows the pgx-native tests write, so they can remove
// exactly those.
const copyMark = 900000

// rawConn runs fn on the *pgx.Conn behind a *sql.Conn: conn.Raw hands out
// tenantpg's *Conn handle, bound to the tenant's connection.
func rawConn(conn *sql.Conn, fn func(*pgx.Conn) error) error {
	return conn.Raw(func(driverConn any) error {
		h, ok := driverConn.(*tenantpg.Conn)
		if !ok {
			return fmt.Errorf("driver connection is %T, want *tenantpg.Conn", driverConn)
		}
		if h.Conn() == nil {
			return fmt.Errorf("handle of tenant %q is not bound", h.Tenant())
		}
		return fn(h.Conn())
	})
}

// TestRawCopyFrom copies rows with pgx's CopyFrom on a tenant's *sql.Conn,
// for 10 tenants at once, through PgBouncer (database alias per tenant) and
// directly (schema per tenant); each tenant's rows land in its own table.
func TestRawCopyFrom(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	routes := map[string]string{
		"bouncer database": withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"),
		"direct schema":    withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_schema={tenant}"),
	}
	for name, dsn := range routes {
		t.Run(name, func(t *testing.T) {
			db := open(t, dsn)
			ctx := testCtx(t)
			var wg sync.WaitGroup
			errs := make([]error, len(ids))
			for i, id := range ids {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = copyForTenant(tenantpg.WithTenant(ctx, id), db, id, 50+i)
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// copyForTenant copies n rows for tenant through conn.Raw, checks that the
// tenant's table holds exactly them and only its own rows, then removes them.
func copyForTenant(ctx context.Context, db *sql.DB, tenant string, n int) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = []any{tenant, copyMark + i}
	}
	err = rawConn(conn, func(pc *pgx.Conn) error {
		copied, err := pc.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"tenant", "val"}, pgx.CopyFromRows(rows))
		if err == nil && copied != int64(n) {
			err = fmt.Errorf("copied %d rows, want %d", copied, n)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("tenant %s: CopyFrom: %w", tenant, err)
	}
	var mine, foreign int
	err = db.QueryRowContext(ctx,
		"select count(*) filter (where tenant = $1 and val >= $2), count(*) filter (where tenant <> $1) from items",
		tenant, copyMark).Scan(&mine, &foreign)
	if err != nil {
		return fmt.Errorf("tenant %s: %w", tenant, err)
	}
	if mine != n || foreign != 0 {
		return fmt.Errorf("tenant %s: %d copied rows visible (want %d), %d rows of other tenants", tenant, mine, n, foreign)
	}
	_, err = db.ExecContext(ctx, "delete from items where val >= $1", copyMark)
	return err
}

// TestRawListenNotify: LISTEN on a tenant's *sql.Conn (pgx's
// WaitForNotification through conn.Raw), NOTIFY through the tenant's pool.
// Channels are per database: with a database per tenant each listener
// receives only its tenant's notifications; tenants sharing a database
// (schema, setting or login routes) share channel names, so the channel
// must carry the tenant. LISTEN needs a session, so it runs on direct
// routes (a transaction pooler may move the session between statements).
func TestRawListenNotify(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 3)
	ctx := testCtx(t)

	t.Run("database per tenant", func(t *testing.T) {
		db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"))
		listeners := map[string]*sql.Conn{}
		for _, id := range ids {
			listeners[id] = listen(t, tenantpg.WithTenant(ctx, id), db, "jobs")
		}
		for _, id := range ids {
			notify(t, tenantpg.WithTenant(ctx, id), db, "jobs", "for "+id)
		}
		for _, id := range ids {
			tctx := tenantpg.WithTenant(ctx, id)
			n, err := waitNotification(tctx, listeners[id], 5*time.Second)
			if err != nil {
				t.Fatalf("tenant %s: %v", id, err)
			}
			if n.Channel != "jobs" || n.Payload != "for "+id {
				t.Fatalf("tenant %s received %q on %q", id, n.Payload, n.Channel)
			}
			if n, err := waitNotification(tctx, listeners[id], 300*time.Millisecond); err == nil {
				t.Fatalf("tenant %s also received %q", id, n.Payload)
			}
			var dbname string
			if err := listeners[id].QueryRowContext(tctx, "select current_database()").Scan(&dbname); err != nil || dbname != id {
				t.Fatalf("tenant %s listener in database %q, %v", id, dbname, err)
			}
		}
	})

	t.Run("shared database", func(t *testing.T) {
		db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_schema={tenant}"))
		a, b := tenantpg.WithTenant(ctx, ids[0]), tenantpg.WithTenant(ctx, ids[1])
		shared := fmt.Sprintf("shared_%d", time.Now().UnixNano())
		la := listen(t, a, db, shared)
		lb := listen(t, b, db, shared)
		own := listen(t, b, db, shared+"_"+ids[1]) // the tenant in the channel name
		notify(t, a, db, shared, "from "+ids[0])
		if n, err := waitNotification(a, la, 5*time.Second); err != nil || n.Payload != "from "+ids[0] {
			t.Fatalf("sender's own listener: %v, %v", n, err)
		}
		// Same database, same channel: tenant b hears tenant a.
		if n, err := waitNotification(b, lb, 5*time.Second); err != nil || n.Payload != "from "+ids[0] {
			t.Fatalf("shared channel: %v, %v; PostgreSQL channels are per database", n, err)
		}
		if n, err := waitNotification(b, own, 300*time.Millisecond); err == nil {
			t.Fatalf("tenant-named channel received %q", n.Payload)
		}
	})
}

// listen opens a *sql.Conn for the tenant in ctx and LISTENs on channel.
func listen(t *testing.T, ctx context.Context, db *sql.DB, channel string) *sql.Conn {
	t.Helper()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	err = rawConn(conn, func(pc *pgx.Conn) error {
		_, err := pc.Exec(ctx, "listen "+pgx.Identifier{channel}.Sanitize())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// notify sends a notification through the tenant's pgxpool.Pool.
func notify(t *testing.T, ctx context.Context, db *sql.DB, channel, payload string) {
	t.Helper()
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "select pg_notify($1, $2)", channel, payload); err != nil {
		t.Fatal(err)
	}
}

// waitNotification waits up to d for a notification on conn.
func waitNotification(ctx context.Context, conn *sql.Conn, d time.Duration) (*pgconn.Notification, error) {
	var out *pgconn.Notification
	err := rawConn(conn, func(pc *pgx.Conn) error {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		var err error
		out, err = pc.WaitForNotification(wctx)
		return err
	})
	return out, err
}

// TestPoolNative uses tenantpg.Pool for pgx-native work (queries, batches,
// transactions, CopyFrom) for 10 tenants at once through PgBouncer with a
// login per tenant; the pool is the one database/sql's checkouts use.
func TestPoolNative(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}", "tenant_max_conns=20", "pool_max_conns=2"))
	ctx := testCtx(t)

	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = poolWork(tenantpg.WithTenant(ctx, id), db, id)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	// database/sql and Pool share the tenant's pool.
	a := tenantpg.WithTenant(ctx, ids[0])
	p1, err := tenantpg.Pool(a, db)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := tenantpg.Pool(a, db)
	if p1 != p2 {
		t.Fatal("Pool returned two pools for one tenant")
	}
	acquired := p1.Stat().AcquireCount()
	if _, err := db.ExecContext(a, "select 1"); err != nil {
		t.Fatal(err)
	}
	if got := p1.Stat().AcquireCount(); got != acquired+1 {
		t.Fatalf("a database/sql checkout acquired %d times from the tenant's pool, want 1", got-acquired)
	}

	// Errors.
	if _, err := tenantpg.Pool(ctx, db); !errors.Is(err, tenantpg.ErrNoTenant) {
		t.Fatalf("Pool without tenant: %v", err)
	}
	if _, err := tenantpg.Pool(tenantpg.WithTenant(ctx, "a.b"), db); !errors.Is(err, tenantpg.ErrInvalidTenant) {
		t.Fatalf("Pool with invalid tenant: %v", err)
	}
	plain, err := sql.Open("pgx", env.DirectURL(env.AppUser, env.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := tenantpg.Pool(a, plain); !errors.Is(err, tenantpg.ErrNotTenantpg) {
		t.Fatalf("Pool of a pgx *sql.DB: %v", err)
	}
}

// poolWork runs pgx-native operations on the tenant's pool and checks that
// the server saw the tenant's login throughout.
func poolWork(ctx context.Context, db *sql.DB, tenant string) error {
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		return err
	}
	want := pgtest.TenantRole(tenant)
	table := pgx.Identifier{tenant, "items"}
	for range 5 {
		var user string
		if err := pool.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
			return err
		}
		if user != want {
			return fmt.Errorf("tenant %s: pool query as %q", tenant, user)
		}
		batch := &pgx.Batch{}
		batch.Queue("select current_user")
		batch.Queue("select count(*) from "+table.Sanitize()+" where tenant <> $1", tenant)
		br := pool.SendBatch(ctx, batch)
		var foreign int
		err1 := br.QueryRow().Scan(&user)
		err2 := br.QueryRow().Scan(&foreign)
		if err := errors.Join(err1, err2, br.Close()); err != nil {
			return fmt.Errorf("tenant %s: batch: %w", tenant, err)
		}
		if user != want || foreign != 0 {
			return fmt.Errorf("tenant %s: batch as %q saw %d foreign rows", tenant, user, foreign)
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			n, err := tx.CopyFrom(ctx, table, []string{"tenant", "val"}, pgx.CopyFromRows([][]any{{tenant, copyMark}, {tenant, copyMark + 1}}))
			if err != nil || n != 2 {
				return fmt.Errorf("copy: %d rows, %w", n, err)
			}
			var owner string
			if err := tx.QueryRow(ctx, "select string_agg(distinct tenant, ',') from "+table.Sanitize()).Scan(&owner); err != nil {
				return err
			}
			if owner != tenant {
				return fmt.Errorf("table holds rows of %q", owner)
			}
			_, err = tx.Exec(ctx, "delete from "+table.Sanitize()+" where val >= $1", copyMark)
			return err
		})
		if err != nil {
			return fmt.Errorf("tenant %s: transaction: %w", tenant, err)
		}
	}
	return acquireIdentity(ctx, pool, want)
}

// acquireIdentity checks a connection acquired by hand.
func acquireIdentity(ctx context.Context, pool *pgxpool.Pool, want string) error {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	var user string
	if err := c.QueryRow(ctx, "select session_user").Scan(&user); err != nil {
		return err
	}
	if user != want {
		return fmt.Errorf("acquired connection of %q, want %q", user, want)
	}
	return nil
}

// TestNativeAcquireOnABusyTenant: database/sql checkouts keep all of a
// tenant's connections busy (4 workers, pool_max_conns=2) and hand them on
// among themselves; a pgx-native Acquire on the tenant's Pool waits in
// pgxpool's queue, which tenantpg does not see, and waited until a
// connection had been held for 10 s. While a native acquire is under way,
// releases now go to pgxpool: 20 native Execs, each within 2 s, while the
// workers run.
func TestNativeAcquireOnABusyTenant(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, "pool_max_conns=2")
	ctx, stop := context.WithCancel(tenantpg.WithTenant(testCtx(t), "t01"))
	var wg sync.WaitGroup
	var queries, errs atomic.Int64
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := db.ExecContext(ctx, "select 1"); err != nil && ctx.Err() == nil {
					errs.Add(1)
				}
				queries.Add(1)
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	for queries.Load() < 200 {
		time.Sleep(5 * time.Millisecond)
	}
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := pool.Exec(actx, "select 1")
		cancel()
		if err != nil {
			t.Fatalf("native Exec %d on the busy tenant: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := errs.Load(); n != 0 {
		t.Fatalf("%d database/sql errors meanwhile", n)
	}
}

// TestPoolNotReapedUnderNativeUse: pgx-native work through Pool is use of
// the pool, so the reaper does not close it under a caller that acquires
// from it again and again (it did after tenant_pool_idle: "closed pool").
func TestPoolNotReapedUnderNativeUse(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, "tenant_pool_idle=200ms")
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if err := pool.Ping(ctx); err != nil {
			t.Fatalf("native use of the pool: %v", err)
		}
	}
	if st := stats(t, db); st.PoolsReaped != 0 {
		t.Fatalf("%d pools reaped under native use", st.PoolsReaped)
	}
	// Unused, it is reaped as before.
	for deadline := time.Now().Add(5 * time.Second); stats(t, db).PoolsReaped != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the unused pool was not reaped")
		}
	}
}

// TestNativeAcquireBehindLongTransactions: a native Acquire that waits
// long (the tenant's only connection is held 2.5 s at a time by
// database/sql transactions) keeps releases going to pgxpool while it
// waits, and gets the connection at the next release; it waited until the
// connection reached 10 s held when only Pool and finished acquires
// diverted releases for 2 s.
func TestNativeAcquireBehindLongTransactions(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, "pool_max_conns=1")
	ctx, stop := context.WithCancel(tenantpg.WithTenant(testCtx(t), "t01"))
	var wg sync.WaitGroup
	var held atomic.Int64
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					continue
				}
				held.Add(1)
				_, _ = tx.ExecContext(ctx, "select pg_sleep(2.5)")
				_ = tx.Commit()
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	for held.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 6*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := pool.Acquire(actx)
	if err != nil {
		t.Fatalf("native Acquire behind 2.5 s transactions: %v after %v", err, time.Since(start))
	}
	conn.Release()
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("native Acquire took %v; one transaction of 2.5 s was ahead of it", d)
	}
}

// TestPoolKeepsParking: fetching a tenant's Pool, without acquiring from
// it, leaves parking on: database/sql's next checkouts reuse the parked
// connection without an acquire from pgxpool. A first version of the
// native-acquire fix turned parking off for 2 s after every Pool call, and
// made each of these checkouts a pgxpool acquire and release.
func TestPoolKeepsParking(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env)
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	if _, err := db.ExecContext(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	before := pool.Stat().AcquireCount()
	for range 100 {
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := pool.Stat().AcquireCount() - before; n > 2 {
		t.Fatalf("100 checkouts after Pool made %d acquires from pgxpool; parked reuse makes none", n)
	}
}
