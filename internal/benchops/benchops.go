// Package benchops holds the queries that tenantpg-bench and tenantpg-probe
// time, so that both commands measure the same work.
package benchops

import (
	"context"
	"database/sql"
	"fmt"
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
