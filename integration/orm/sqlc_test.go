package orm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/integration/orm/sqlcdb"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// sqlcCRUD runs the generated queries for one tenant through q (over db:
// New(db), or Prepare's statements), q.WithTx (*sql.Tx) and New over a
// *sql.Conn; every row it reads must be the tenant's. It leaves the table as
// it found it.
func sqlcCRUD(ctx context.Context, db *sql.DB, q *sqlcdb.Queries, tenant string) error {
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
			items, err := qc.ListItems(ctx)
			if err != nil {
				return err
			}
			return checkOwn(tenant, itemOwners(items))
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
	return checkOwn(tenant, itemOwners(after))
}

func itemOwners(items []sqlcdb.Item) []string {
	owners := make([]string, len(items))
	for i, it := range items {
		owners[i] = it.Tenant
	}
	return owners
}

func docOwners(docs []sqlcdb.Doc) []string {
	owners := make([]string, len(docs))
	for i, d := range docs {
		owners[i] = d.TenantID
	}
	return owners
}

// TestSqlcDatabaseRoute runs sqlc's queries through PgBouncer with a
// database alias per tenant, 12 tenants at once.
func TestSqlcDatabaseRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	db := openDB(t, bouncerDatabaseDSN(env))
	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return sqlcCRUD(ctx, db, sqlcdb.New(db), tenant)
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
			if err := checkOwn(tenant, docOwners(docs)); err != nil || len(docs) < 2 {
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

// TestSqlcPreparedQueries runs the code sqlc generates with
// emit_prepared_queries: Prepare, under one tenant's context, prepares every
// query once as a *sql.Stmt on a DB, and 12 tenants share those statements
// at once (and through WithTx, which takes them into each transaction with
// tx.StmtContext); every row each reads must be its own. On the direct
// route the tenant is a schema and an RLS setting, in both exec modes;
// through PgBouncer it is a database alias.
func TestSqlcPreparedQueries(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	// Prepare checks every query on the preparing tenant's connection, so
	// each route needs every table of schema.sql: the tenant databases have
	// items; give them docs too.
	for _, id := range ids {
		superExec(t, env, id, `create table if not exists public.docs (id serial primary key, tenant_id text not null, body text not null);
			grant all on public.docs, public.docs_id_seq to `+pgx.Identifier{env.AppUser}.Sanitize())
	}
	direct := withParams(env.DirectURL(env.AppUser, env.AppDatabase),
		"tenant_schema={tenant},public", "tenant_setting=app.tenant_id", "tenant_max_conns=24", "pool_max_conns=2")
	for _, rt := range []struct {
		name, dsn string
		rls       bool // docs are the tenant's by row-level security
	}{
		{"direct, cache_statement", withParams(direct, "default_query_exec_mode=cache_statement"), true},
		{"direct, exec", withParams(direct, "default_query_exec_mode=exec"), true},
		{"PgBouncer database alias", bouncerDatabaseDSN(env), false},
	} {
		t.Run(rt.name, func(t *testing.T) {
			db := openDB(t, rt.dsn)
			if _, err := sqlcdb.Prepare(context.Background(), db); !errors.Is(err, tenantpg.ErrNoTenant) {
				t.Fatalf("Prepare without a tenant: %v, want ErrNoTenant", err)
			}
			q, err := sqlcdb.Prepare(tenantpg.WithTenant(ctx, ids[0]), db)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
				if err := sqlcCRUD(ctx, db, q, tenant); err != nil {
					return err
				}
				docs, err := q.ListDocs(ctx)
				if err != nil {
					return err
				}
				if err := checkOwn(tenant, docOwners(docs)); err != nil || rt.rls && len(docs) < 2 {
					return fmt.Errorf("%d docs: %v", len(docs), err)
				}
				return nil
			})
			checkPools(t, db, ids)
			// The statements need a tenant to run, as every query does.
			if _, err := q.ListItems(context.Background()); !errors.Is(err, tenantpg.ErrNoTenant) {
				t.Fatalf("prepared query without a tenant: %v, want ErrNoTenant", err)
			}
		})
	}
}
