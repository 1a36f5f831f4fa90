package orm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// sqlx chooses bindvars by driver name and does not know "tenantpg": without
// this line it leaves ? in place (sqlx.UNKNOWN) and PostgreSQL rejects the
// query. Register it once, at program start.
func init() {
	sqlx.BindDriver("tenantpg", sqlx.DOLLAR)
}

// Item is a row of the provisioned items table (per-tenant database or
// per-tenant schema).
type Item struct {
	ID     int64  `db:"id"`
	Tenant string `db:"tenant"`
	Val    int    `db:"val"`
}

// sqlxCRUD runs create, read, update, delete and transactions for one
// tenant on the items table; every row it reads must be the tenant's. It
// leaves the table as it found it.
func sqlxCRUD(ctx context.Context, x *sqlx.DB, tenant string) error {
	var before []Item
	if err := x.SelectContext(ctx, &before, "select id, tenant, val from items order by id"); err != nil {
		return fmt.Errorf("select: %w", err)
	}
	if len(before) == 0 {
		return errors.New("no seeded rows")
	}
	for i := range rounds {
		var id int64
		// Rebind turns ? into $1, $2 (bindvars registered for "tenantpg").
		if err := x.GetContext(ctx, &id, x.Rebind("insert into items (tenant, val) values (?, ?) returning id"), tenant, 1000+i); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		// Named queries compile to $n too.
		rows, err := x.NamedQueryContext(ctx, "insert into items (tenant, val) values (:tenant, :val) returning id", Item{Tenant: tenant, Val: 2000 + i})
		if err != nil {
			return fmt.Errorf("named insert: %w", err)
		}
		var id2 int64
		for rows.Next() {
			if err := rows.Scan(&id2); err != nil {
				rows.Close()
				return err
			}
		}
		if err := rows.Close(); err != nil || id2 == 0 {
			return fmt.Errorf("named insert: id %d, %v", id2, err)
		}
		var it Item
		if err := x.GetContext(ctx, &it, "select id, tenant, val from items where id = $1", id); err != nil {
			return fmt.Errorf("get: %w", err)
		}
		if it.Tenant != tenant || it.Val != 1000+i {
			return fmt.Errorf("read back %+v", it)
		}
		res, err := x.NamedExecContext(ctx, "update items set val = :val where id = :id", Item{ID: id2, Val: 3000 + i})
		if n, _ := rowsAffected(res, err); n != 1 {
			return fmt.Errorf("update: %d rows, %v", n, err)
		}

		// Committed and rolled-back transactions.
		tx, err := x.BeginTxx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind("delete from items where id in (?, ?)"), id, id2); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		tx, err = x.BeginTxx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.NamedExecContext(ctx, "insert into items (tenant, val) values (:tenant, :val)", Item{Tenant: tenant, Val: -1}); err != nil {
			tx.Rollback()
			return err
		}
		var inTx int
		if err := tx.GetContext(ctx, &inTx, "select count(*) from items where val = -1"); err != nil || inTx != 1 {
			tx.Rollback()
			return fmt.Errorf("inside the transaction: %d rows, %v", inTx, err)
		}
		if err := tx.Rollback(); err != nil {
			return err
		}
	}
	var after []Item
	if err := x.SelectContext(ctx, &after, "select id, tenant, val from items order by id"); err != nil {
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

func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// TestSqlxDatabaseRoute runs sqlx through PgBouncer with a database alias
// per tenant (tenant_database={tenant}), 12 tenants at once, and checks that
// pgx never received a ? placeholder.
func TestSqlxDatabaseRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	sqlDB, rec := openTraced(t, bouncerDatabaseDSN(env))
	x := sqlx.NewDb(sqlDB, "tenantpg")

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		var db string
		if err := x.GetContext(ctx, &db, "select current_database()"); err != nil || db != tenant {
			return fmt.Errorf("database %q, %v", db, err)
		}
		return sqlxCRUD(ctx, x, tenant)
	})
	checkPools(t, sqlDB, ids)

	dollar := 0
	for _, q := range rec.all() {
		if strings.Contains(q.SQL, "?") {
			t.Errorf("pgx was sent a ? placeholder: %q", q.SQL)
		}
		if strings.Contains(q.SQL, "$1") {
			dollar++
		}
	}
	if dollar < len(ids)*rounds {
		t.Fatalf("only %d queries with $1 placeholders recorded", dollar)
	}
}

// TestSqlxBindvars pins down the setup lines: the driver name sqlx is given
// decides its placeholders.
func TestSqlxBindvars(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	sqlDB := openDB(t, bouncerDatabaseDSN(env))

	// Registered in init above, or use a name sqlx knows as PostgreSQL.
	for _, name := range []string{"tenantpg", "pgx", "postgres"} {
		x := sqlx.NewDb(sqlDB, name)
		if got := x.Rebind("val = ? and id = ?"); got != "val = $1 and id = $2" {
			t.Errorf("NewDb(db, %q).Rebind = %q", name, got)
		}
		q, _, err := x.BindNamed("val = :val", Item{Val: 1})
		if err != nil || q != "val = $1" {
			t.Errorf("NewDb(db, %q).BindNamed = %q, %v", name, q, err)
		}
		var n int
		if err := x.GetContext(ctx, &n, x.Rebind("select count(*) from items where tenant = ?"), ids[0]); err != nil || n == 0 {
			t.Errorf("NewDb(db, %q): %d rows, %v", name, n, err)
		}
	}
	// A name sqlx does not know keeps ?, which PostgreSQL rejects: the
	// mistake is loud, not a silent misbinding.
	x := sqlx.NewDb(sqlDB, "some-unregistered-name")
	if sqlx.BindType("some-unregistered-name") != sqlx.UNKNOWN || x.Rebind("id = ?") != "id = ?" {
		t.Fatal("sqlx rebinds for an unknown driver name")
	}
	var n int
	err := x.GetContext(ctx, &n, x.Rebind("select count(*) from items where tenant = ?"), ids[0])
	if sqlState(err) != "42601" {
		t.Fatalf("? placeholder: %v, want a syntax error (42601)", err)
	}

	// sqlx.Connect pings without a context: tenantpg answers it without a
	// tenant, and the handle then serves tenants.
	cx, err := sqlx.Connect("tenantpg", bouncerDatabaseDSN(env))
	if err != nil {
		t.Fatalf("sqlx.Connect: %v", err)
	}
	defer cx.Close()
	if err := cx.GetContext(ctx, &n, cx.Rebind("select count(*) from items where tenant = ?"), ids[0]); err != nil || n == 0 {
		t.Fatalf("after sqlx.Connect: %d rows, %v", n, err)
	}
}

// TestSqlxPrepared runs sqlx's prepared statements on the direct schema
// route and through PgBouncer 1.18 in transaction mode (a database alias
// per tenant): one *sqlx.Stmt and one *sqlx.NamedStmt, prepared under one
// tenant, serve all tenants at once, each on its own connection.
func TestSqlxPrepared(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	for _, route := range []struct {
		name, dsn, whereQuery string
	}{
		{"direct schema", directSchemaDSN(env), "select current_schema()"},
		{"PgBouncer alias", bouncerDatabaseDSN(env), "select current_database()"},
	} {
		t.Run(route.name, func(t *testing.T) {
			sqlxPrepared(t, ids, openDB(t, route.dsn), route.whereQuery)
		})
	}
}

// sqlxPrepared is TestSqlxPrepared on one route; whereQuery returns the
// tenant's name.
func sqlxPrepared(t *testing.T, ids []string, sqlDB *sql.DB, whereQuery string) {
	ctx := testCtx(t)
	x := sqlx.NewDb(sqlDB, "tenantpg")

	first := tenantpg.WithTenant(ctx, ids[0])
	sel, err := x.PreparexContext(first, "select id, tenant, val from items where val >= $1 order by id")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	ins, err := x.PrepareNamedContext(first, "insert into items (tenant, val) values (:tenant, :val) returning id")
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	del, err := x.PrepareNamedContext(first, "delete from items where id = :id")
	if err != nil {
		t.Fatal(err)
	}
	defer del.Close()

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		for i := range rounds {
			var id int64
			if err := ins.GetContext(ctx, &id, Item{Tenant: tenant, Val: 500 + i}); err != nil {
				return fmt.Errorf("named insert: %w", err)
			}
			var items []Item
			if err := sel.SelectContext(ctx, &items, 500); err != nil {
				return fmt.Errorf("select: %w", err)
			}
			owners := make([]string, len(items))
			for j, it := range items {
				owners[j] = it.Tenant
			}
			if err := checkOwn(tenant, owners); err != nil {
				return err
			}
			if len(items) != 1 || items[0].ID != id {
				return fmt.Errorf("prepared select saw %+v, want only row %d", items, id)
			}
			// A prepared statement inside a transaction.
			tx, err := x.BeginTxx(ctx, nil)
			if err != nil {
				return err
			}
			res, err := tx.NamedStmtContext(ctx, del).ExecContext(ctx, Item{ID: id})
			if n, _ := rowsAffected(res, err); n != 1 {
				tx.Rollback()
				return fmt.Errorf("delete in tx: %d rows, %v", n, err)
			}
			if err := tx.Commit(); err != nil {
				return err
			}
		}
		var where string
		if err := x.QueryRowxContext(ctx, whereQuery).Scan(&where); err != nil || where != tenant {
			return fmt.Errorf("%s: %q, %v", whereQuery, where, err)
		}
		return nil
	})
	checkPools(t, sqlDB, ids)
}

// TestSqlxWithoutContext: sqlx's methods without Context have no tenant and
// fail with tenantpg.ErrNoTenant; Connx keeps a tenant's session.
func TestSqlxWithoutContext(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	sqlDB := openDB(t, bouncerDatabaseDSN(env))
	x := sqlx.NewDb(sqlDB, "tenantpg")

	var items []Item
	var n int
	_, prepErr := x.Preparex("select 1")
	_, namedErr := x.PrepareNamed("select :val")
	_, beginErr := x.Beginx()
	_, queryErr := x.Queryx("select 1")
	_, namedExecErr := x.NamedExec("delete from items where val = :val", Item{})
	for name, err := range map[string]error{
		"Select":       x.Select(&items, "select id, tenant, val from items"),
		"Get":          x.Get(&n, "select count(*) from items"),
		"Queryx":       queryErr,
		"NamedExec":    namedExecErr,
		"Preparex":     prepErr,
		"PrepareNamed": namedErr,
		"Beginx":       beginErr,
	} {
		if !errors.Is(err, tenantpg.ErrNoTenant) {
			t.Errorf("%s: %v, want ErrNoTenant", name, err)
		}
	}
	if st := stats(t, sqlDB); st.Dials != 0 {
		t.Fatalf("tenant-less calls dialed %d times", st.Dials)
	}

	// Connx pins one connection of the tenant: session state persists (on a
	// direct route; a transaction pooler may switch server connections
	// between statements).
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	x = sqlx.NewDb(openDB(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_database={tenant}")), "tenantpg")
	conn, err := x.Connx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "select set_config('application_name', $1, false)", "sqlx-"+ids[0]); err != nil {
		t.Fatal(err)
	}
	var app, db string
	if err := conn.QueryRowxContext(ctx, "select current_setting('application_name'), current_database()").Scan(&app, &db); err != nil {
		t.Fatal(err)
	}
	if app != "sqlx-"+ids[0] || db != ids[0] {
		t.Fatalf("Connx session: application_name %q, database %q", app, db)
	}
}
