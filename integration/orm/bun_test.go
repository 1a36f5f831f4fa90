package orm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// BunItem maps the provisioned items table.
type BunItem struct {
	bun.BaseModel `bun:"table:items"`

	ID     int64  `bun:"id,pk,autoincrement"`
	Tenant string `bun:"tenant,notnull"`
	Val    int    `bun:"val,notnull"`
}

// BunDoc maps public.docs, filtered by row-level security on app.tenant_id.
type BunDoc struct {
	bun.BaseModel `bun:"table:docs"`

	ID       int64  `bun:"id,pk,autoincrement"`
	TenantID string `bun:"tenant_id,notnull"`
	Body     string `bun:"body,notnull"`
}

// bunCRUD runs create, read, update, delete and transactions for one tenant
// on items; every row it reads must be the tenant's. It leaves the table as
// it found it.
func bunCRUD(ctx context.Context, db *bun.DB, tenant string) error {
	before, err := db.NewSelect().Model((*BunItem)(nil)).Count(ctx)
	if err != nil {
		return err
	}
	for i := range rounds {
		it := &BunItem{Tenant: tenant, Val: 100 + i}
		if _, err := db.NewInsert().Model(it).Exec(ctx); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if it.ID == 0 {
			return errors.New("insert returned no id")
		}
		got := &BunItem{ID: it.ID}
		if err := db.NewSelect().Model(got).WherePK().Scan(ctx); err != nil {
			return fmt.Errorf("select: %w", err)
		}
		if got.Tenant != tenant || got.Val != 100+i {
			return fmt.Errorf("read back %+v", got)
		}
		res, err := db.NewUpdate().Model(got).Set("val = val + ?", 1000).WherePK().Exec(ctx)
		if n, _ := rowsAffected(res, err); n != 1 {
			return fmt.Errorf("update: %d rows, %v", n, err)
		}
		err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			var v int
			if err := tx.NewSelect().Model((*BunItem)(nil)).Column("val").Where("id = ?", it.ID).Scan(ctx, &v); err != nil {
				return err
			}
			if v != 1100+i {
				return fmt.Errorf("val %d in transaction", v)
			}
			_, err := tx.NewDelete().Model(it).WherePK().Exec(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("transaction: %w", err)
		}
		err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.NewInsert().Model(&BunItem{Tenant: tenant, Val: -1}).Exec(ctx); err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			return fmt.Errorf("rolled back transaction: %v", err)
		}
	}
	var all []BunItem
	if err := db.NewSelect().Model(&all).Order("id").Scan(ctx); err != nil {
		return err
	}
	if len(all) != int(before) {
		return fmt.Errorf("%d rows after, %d before", len(all), before)
	}
	owners := make([]string, len(all))
	for i, it := range all {
		owners[i] = it.Tenant
	}
	return checkOwn(tenant, owners)
}

// TestBunDatabaseRoute runs bun (pgdialect over tenantpg's *sql.DB)
// through PgBouncer with a database alias per tenant, 12 tenants at once.
// bun formats arguments into the SQL text itself: pgx receives no ? and no
// parameters.
func TestBunDatabaseRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	sqlDB, rec := openTraced(t, bouncerDatabaseDSN(env))
	db := bun.NewDB(sqlDB, pgdialect.New())

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return bunCRUD(ctx, db, tenant)
	})
	checkPools(t, sqlDB, ids)
	bunQueries := rec.matching(`"items"`)
	if len(bunQueries) < len(ids)*rounds {
		t.Fatalf("only %d bun queries recorded", len(bunQueries))
	}
	for _, q := range bunQueries {
		if strings.Contains(q.SQL, "?") {
			t.Errorf("pgx was sent a ? placeholder: %q", q.SQL)
		}
	}

	// Without a tenant, bun fails closed.
	_, err := db.NewSelect().Model((*BunItem)(nil)).Count(context.Background())
	if !errors.Is(err, tenantpg.ErrNoTenant) {
		t.Fatalf("bun without tenant: %v, want ErrNoTenant", err)
	}
}

// TestBunRowLevelSecurity runs bun on the direct route with tenant_setting:
// each connection starts with app.tenant_id set to its tenant, and the RLS
// policy on docs hides and protects other tenants' rows.
func TestBunRowLevelSecurity(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	sqlDB := openDB(t, directSettingDSN(env))
	db := bun.NewDB(sqlDB, pgdialect.New())

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		if _, err := db.NewDelete().Model((*BunDoc)(nil)).Where("body like 'bun %'").Exec(ctx); err != nil {
			return err
		}
		for i := range rounds {
			if _, err := db.NewInsert().Model(&BunDoc{TenantID: tenant, Body: fmt.Sprintf("bun %d", i)}).Exec(ctx); err != nil {
				return fmt.Errorf("insert: %w", err)
			}
		}
		var docs []BunDoc
		if err := db.NewSelect().Model(&docs).Scan(ctx); err != nil {
			return err
		}
		if len(docs) != rounds+2 { // 2 provisioned docs per tenant
			return fmt.Errorf("%d docs visible, want %d", len(docs), rounds+2)
		}
		owners := make([]string, len(docs))
		for i, d := range docs {
			owners[i] = d.TenantID
		}
		if err := checkOwn(tenant, owners); err != nil {
			return err
		}
		// Other tenants' rows can be neither written nor changed.
		_, err := db.NewInsert().Model(&BunDoc{TenantID: "not-" + tenant, Body: "bun forged"}).Exec(ctx)
		if sqlState(err) != "42501" {
			return fmt.Errorf("insert for another tenant: %v, want an RLS violation (42501)", err)
		}
		res, err := db.NewUpdate().Model((*BunDoc)(nil)).Set("body = 'bun hijacked'").Where("tenant_id <> ?", tenant).Exec(ctx)
		if n, err := rowsAffected(res, err); n != 0 || err != nil {
			return fmt.Errorf("update of other tenants' docs: %d rows, %v", n, err)
		}
		return nil
	})
	checkPools(t, sqlDB, ids)

	// As the superuser (no RLS): no doc was forged or hijacked.
	superExec(t, env, env.AppDatabase, `do $$ begin
		if exists (select from docs where body in ('bun hijacked', 'bun forged')) then raise exception 'cross-tenant write'; end if;
		end $$`)
}
