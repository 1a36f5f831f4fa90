package orm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/integration/orm/sqlcdb"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// sqlcCRUD runs the generated-style queries for one tenant over *sql.DB,
// *sql.Tx (WithTx) and *sql.Conn; every row it reads must be the tenant's.
// It leaves the table as it found it.
func sqlcCRUD(ctx context.Context, db *sql.DB, tenant string) error {
	q := sqlcdb.New(db)
	before, err := q.ListItems(ctx)
	if err != nil {
		return err
	}
	for i := range rounds {
		it, err := q.CreateItem(ctx, sqlcdb.CreateItemParams{Tenant: tenant, Val: int32(i)})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		got, err := q.GetItem(ctx, it.ID)
		if err != nil || got != it {
			return fmt.Errorf("get: %+v, %v", got, err)
		}
		if n, err := q.UpdateItemVal(ctx, sqlcdb.UpdateItemValParams{ID: it.ID, Val: 99}); n != 1 || err != nil {
			return fmt.Errorf("update: %d rows, %v", n, err)
		}

		// A transaction: WithTx over *sql.Tx.
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		qtx := q.WithTx(tx)
		got, err = qtx.GetItem(ctx, it.ID)
		if err == nil && got.Val != 99 {
			err = fmt.Errorf("val %d in transaction", got.Val)
		}
		if err == nil {
			_, err = qtx.DeleteItem(ctx, it.ID)
		}
		if err != nil {
			tx.Rollback()
			return fmt.Errorf("transaction: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		if _, err := q.GetItem(ctx, it.ID); !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("deleted row: %v", err)
		}

		// A session: New over *sql.Conn, a rolled-back transaction in it.
		conn, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		err = func() error {
			defer conn.Close()
			qc := sqlcdb.New(conn)
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := qc.WithTx(tx).CreateItem(ctx, sqlcdb.CreateItemParams{Tenant: tenant, Val: -1}); err != nil {
				tx.Rollback()
				return err
			}
			if err := tx.Rollback(); err != nil {
				return err
			}
			id, err := qc.CurrentIdentity(ctx)
			if err != nil {
				return err
			}
			if id.Database != tenant {
				return fmt.Errorf("*sql.Conn in database %q", id.Database)
			}
			return nil
		}()
		if err != nil {
			return fmt.Errorf("session: %w", err)
		}
	}
	after, err := q.ListItems(ctx)
	if err != nil {
		return err
	}
	if len(after) != len(before) {
		return fmt.Errorf("%d rows after, %d before", len(after), len(before))
	}
	owners := make([]string, len(after))
	for i, it := range after {
		owners[i] = it.Tenant
	}
	return checkOwn(tenant, owners)
}

// TestSqlcDatabaseRoute runs sqlc-style queries through PgBouncer with a
// database alias per tenant, 12 tenants at once.
func TestSqlcDatabaseRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	db := openDB(t, bouncerDatabaseDSN(env))
	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return sqlcCRUD(ctx, db, tenant)
	})
	checkPools(t, db, ids)

	// Without a tenant, every DBTX fails closed.
	if _, err := sqlcdb.New(db).ListItems(context.Background()); !errors.Is(err, tenantpg.ErrNoTenant) {
		t.Fatalf("without tenant: %v, want ErrNoTenant", err)
	}
}

// TestSqlcSupavisorRoute runs the identity query through PgBouncer with a
// login per tenant, and the RLS queries on the direct setting route.
func TestSqlcSupavisorRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	login := sqlcdb.New(openDB(t, bouncerUserDSN(env)))
	rls := sqlcdb.New(openDB(t, directSettingDSN(env)))
	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		for range rounds {
			id, err := login.CurrentIdentity(ctx)
			if err != nil {
				return err
			}
			if id.Login != pgtest.TenantRole(tenant) || id.Database != env.AppDatabase {
				return fmt.Errorf("server saw %s in %s", id.Login, id.Database)
			}
			docs, err := rls.ListDocs(ctx)
			if err != nil {
				return err
			}
			owners := make([]string, len(docs))
			for i, d := range docs {
				owners[i] = d.TenantID
			}
			if err := checkOwn(tenant, owners); err != nil || len(docs) < 2 {
				return fmt.Errorf("%d docs: %v", len(docs), err)
			}
		}
		_, err := rls.CreateDoc(ctx, sqlcdb.CreateDocParams{TenantID: "not-" + tenant, Body: "sqlc forged"})
		if sqlState(err) != "42501" {
			return fmt.Errorf("insert for another tenant: %v, want an RLS violation (42501)", err)
		}
		return nil
	})
}
