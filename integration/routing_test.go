package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
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

// hammer runs ops queries from workers goroutines, each for a random tenant,
// and returns the first few failures and the error count.
func hammer(t *testing.T, ids []string, workers, ops int, op func(ctx context.Context, tenant string, i int) error) (errs int64) {
	t.Helper()
	var next atomic.Int64
	var failures atomic.Int64
	var firstMu sync.Mutex
	var first []error
	var wg sync.WaitGroup
	base, cancel := context.WithTimeout(context.Background(), hammerTimeout)
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > ops {
					return
				}
				tenant := ids[rand.IntN(len(ids))]
				if err := op(tenantpg.WithTenant(base, tenant), tenant, i); err != nil {
					failures.Add(1)
					firstMu.Lock()
					if len(first) < 5 {
						first = append(first, fmt.Errorf("tenant %s op %d: %w", tenant, i, err))
					}
					firstMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range first {
		t.Error(err)
	}
	return failures.Load()
}

// hammerTimeout bounds every operation of hammer.
var hammerTimeout = 2 * time.Minute

func TestBouncerUserRouting(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 20)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"))
	const ops = 4000
	errs := hammer(t, ids, 32, ops, func(ctx context.Context, tenant string, _ int) error {
		user, err := queryString(ctx, db, "select current_user")
		if err != nil {
			return err
		}
		if user != "app."+tenant {
			return fmt.Errorf("current_user %q", user)
		}
		return nil
	})
	if errs != 0 {
		t.Fatalf("%d of %d queries failed", errs, ops)
	}
	st := stats(t, db)
	if len(st.Pools) != len(ids) {
		t.Errorf("%d pools for %d tenants", len(st.Pools), len(ids))
	}
	t.Logf("%d queries, %d dials, %d pools, peak %d connections", ops, st.Dials, len(st.Pools), st.PeakConns)
	if st.Dials > int64(len(ids)*4) {
		t.Errorf("%d dials for %d tenants of at most 4 connections: connections are not reused", st.Dials, len(ids))
	}
}

func TestBouncerDatabaseRouting(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"))
	errs := hammer(t, ids, 16, 2000, func(ctx context.Context, tenant string, _ int) error {
		got, err := queryString(ctx, db, "select current_database()")
		if err != nil {
			return err
		}
		if got != tenant {
			return fmt.Errorf("current_database %q", got)
		}
		return nil
	})
	if errs != 0 {
		t.Fatalf("%d queries failed", errs)
	}
}

func TestDirectSchemaRouting(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_schema={tenant}"))
	errs := hammer(t, ids, 16, 2000, func(ctx context.Context, tenant string, _ int) error {
		var schema string
		var foreign, own int
		err := db.QueryRowContext(ctx,
			"select current_schema(), count(*) filter (where tenant <> $1), count(*) filter (where tenant = $1) from items",
			tenant).Scan(&schema, &foreign, &own)
		if err != nil {
			return err
		}
		if schema != tenant || foreign != 0 || own == 0 {
			return fmt.Errorf("schema %q, %d foreign rows, %d own rows", schema, foreign, own)
		}
		return nil
	})
	if errs != 0 {
		t.Fatalf("%d queries failed", errs)
	}
}

func TestDirectSettingRLS(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 10)
	db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_setting=app.tenant_id"))
	errs := hammer(t, ids, 16, 2000, func(ctx context.Context, tenant string, _ int) error {
		rows, err := db.QueryContext(ctx, "select tenant_id from docs")
		if err != nil {
			return err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var got string
			if err := rows.Scan(&got); err != nil {
				return err
			}
			if got != tenant {
				return fmt.Errorf("RLS returned a row of %q", got)
			}
			n++
		}
		if n == 0 {
			return errors.New("RLS returned no rows")
		}
		return rows.Err()
	})
	if errs != 0 {
		t.Fatalf("%d queries failed", errs)
	}
}

func TestResolverRoutesToTwoServers(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	ctx := testCtx(t)
	other, err := pgtest.StartPostgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if err := other.Provision(ctx, "t02"); err != nil {
		t.Fatal(err)
	}
	base, err := pgxpool.ParseConfig(env.DirectURL(env.AppUser, env.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	otherURL, _ := url.Parse(other.URL(other.AppUser, other.AppDatabase))
	otherPass, _ := otherURL.User.Password()
	db, err := tenantpg.OpenDB(&tenantpg.Config{
		Pool: base,
		Resolve: func(_ context.Context, tenant string, pc *pgxpool.Config) error {
			switch tenant {
			case "t01":
			case "t02":
				pc.ConnConfig.Port = uint16(other.Port)
				pc.ConnConfig.Password = otherPass
			default:
				return fmt.Errorf("unknown tenant %q: %w", tenant, tenantpg.ErrInvalidTenant)
			}
			pc.ConnConfig.User = "app." + tenant
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for tenant, port := range map[string]int{"t01": env.PGPort, "t02": other.Port} {
		var gotPort int
		var user string
		if err := db.QueryRowContext(tenantpg.WithTenant(ctx, tenant),
			"select inet_server_port(), current_user").Scan(&gotPort, &user); err != nil {
			t.Fatal(err)
		}
		if gotPort != port || user != "app."+tenant {
			t.Errorf("tenant %s reached port %d as %s, want port %d", tenant, gotPort, user, port)
		}
	}
	_, err = db.ExecContext(tenantpg.WithTenant(ctx, "t03"), "select 1")
	mustErrIs(t, err, tenantpg.ErrInvalidTenant)
}

func TestBouncerExecModeReturnsOwnResults(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 4)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"))
	const ops = 20000
	errs := hammer(t, ids, 32, ops, func(ctx context.Context, _ string, i int) error {
		var got int
		if err := db.QueryRowContext(ctx, "select $1::int", i).Scan(&got); err != nil {
			return err
		}
		if got != i {
			return fmt.Errorf("select $1::int with %d returned %d", i, got)
		}
		return nil
	})
	if errs != 0 {
		t.Fatalf("%d of %d queries failed", errs, ops)
	}
}

func TestUnknownTenantRejectedOnce(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	ctx := testCtx(t)
	for name, dsn := range map[string]string{
		"pgbouncer alias": withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"),
		"postgres role":   withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"),
		"postgres db":     withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}"),
	} {
		t.Run(name, func(t *testing.T) {
			db := open(t, dsn)
			tctx := tenantpg.WithTenant(ctx, "nosuch")
			_, err := db.ExecContext(tctx, "select 1")
			var re *tenantpg.RejectedError
			if !errors.As(err, &re) || re.Cached {
				t.Fatalf("first error = %v, want an uncached *RejectedError", err)
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				t.Fatalf("rejection does not unwrap to *pgconn.PgError: %v", err)
			}
			t.Logf("%s: SQLSTATE %s %s", name, pe.Code, pe.Message)
			dials := stats(t, db).Dials
			if dials != 1 {
				t.Errorf("%d dials for the first request, want 1", dials)
			}
			// A burst of repeats fails fast without dialing.
			var wg sync.WaitGroup
			for i := 0; i < 50; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := db.ExecContext(tctx, "select 1")
					var re *tenantpg.RejectedError
					if !errors.As(err, &re) || !re.Cached {
						t.Errorf("repeat error = %v, want a cached *RejectedError", err)
					}
				}()
			}
			wg.Wait()
			if got := stats(t, db).Dials; got != dials {
				t.Errorf("repeats dialed %d more times", got-dials)
			}
			// A known tenant on the same DB still works.
			if _, err := db.ExecContext(tenantpg.WithTenant(ctx, "t01"), "select 1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestColdTenantBurstCreatesOnePool(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 3)
	db := open(t, withParams(env.BouncerURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"))
	ctx := tenantpg.WithTenant(testCtx(t), "t03")
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := queryString(ctx, db, "select current_user"); err != nil {
				failed.Add(1)
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st := stats(t, db)
	if st.PoolsCreated != 1 || failed.Load() != 0 {
		t.Fatalf("%d pools created, %d failures", st.PoolsCreated, failed.Load())
	}
	if st.Dials > 4 {
		t.Fatalf("%d dials for a pool of 4", st.Dials)
	}
}

var _ = sql.ErrNoRows

func TestHookErrorsAreNotRejections(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	var calls atomic.Int64
	db := hookedUserDB(t, env, func(pc *pgxpool.Config) {
		pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			calls.Add(1)
			_, err := c.Exec(ctx, "set role nosuchrole")
			return err
		}
	})
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	for i := 0; i < 3; i++ {
		_, err := db.ExecContext(ctx, "select 1")
		var pe *pgconn.PgError
		if err == nil || errors.Is(err, tenantpg.ErrTenantRejected) || !errors.As(err, &pe) {
			t.Fatalf("attempt %d: %v, want the hook's error, not a rejection", i, err)
		}
	}
	if calls.Load() != 3 {
		t.Fatalf("hook ran %d times, want 3 (no negative caching)", calls.Load())
	}
}
