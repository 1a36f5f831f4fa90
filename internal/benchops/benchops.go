// Package benchops holds the queries that tenantpg-bench and tenantpg-probe
// time, so that both commands measure the same work.
package benchops

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// QueryInt runs select $1::int with i on db under ctx and fails unless the
// server returns i.
func QueryInt(ctx context.Context, db *sql.DB, i int) error {
	var n int
	if err := db.QueryRowContext(ctx, "select $1::int", i).Scan(&n); err != nil {
		return err
	}
	if n != i {
		return fmt.Errorf("select $1 returned %d for %d", n, i)
	}
	return nil
}

// PoolQueryInt is QueryInt on a pgxpool.Pool, pgx's native API.
func PoolQueryInt(ctx context.Context, pool *pgxpool.Pool, i int) error {
	var n int
	if err := pool.QueryRow(ctx, "select $1::int", i).Scan(&n); err != nil {
		return err
	}
	if n != i {
		return fmt.Errorf("select $1 returned %d for %d", n, i)
	}
	return nil
}

// CheckSetting runs the tenant query of the many-tenant scenarios: the
// session's app.tenant_id must be tenant. It fails with the query's error
// or with the setting the session had instead.
func CheckSetting(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, tenant string) error {
	var got string
	if err := q.QueryRowContext(ctx, "select current_setting('app.tenant_id')").Scan(&got); err != nil {
		return err
	}
	if got != tenant {
		return fmt.Errorf("tenant %s got setting %q", tenant, got)
	}
	return nil
}

// MapOfDBs opens the alternative tenantpg is measured against with many
// tenants: one stdlib.OpenDB per tenant, logging in with base and
// app.tenant_id set to the tenant, each with at most perTenant open and
// idle connections. The caller closes them.
func MapOfDBs(base *pgx.ConnConfig, ids []string, perTenant int) map[string]*sql.DB {
	dbs := make(map[string]*sql.DB, len(ids))
	for _, id := range ids {
		cc := base.Copy()
		cc.RuntimeParams["app.tenant_id"] = id
		db := stdlib.OpenDB(*cc)
		db.SetMaxOpenConns(perTenant)
		db.SetMaxIdleConns(perTenant)
		dbs[id] = db
	}
	return dbs
}

// Warm runs hold perTenant times at once for every tenant, 16 calls at a
// time in all, so that each tenant's pool opens perTenant connections as a
// steady load would and measured runs compare reuse, not first dials. It
// ignores failures: they show in the measured runs.
func Warm(ctx context.Context, ids []string, perTenant int, hold func(ctx context.Context, tenant string) error) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, t := range ids {
		for range perTenant {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				_ = hold(ctx, t)
			})
		}
	}
	wg.Wait()
}

// Hold keeps a connection of db busy for 50 ms under ctx, long enough for
// Warm's calls for one tenant to overlap.
func Hold(ctx context.Context, db *sql.DB) error {
	_, err := db.ExecContext(ctx, "select pg_sleep(0.05)")
	return err
}
