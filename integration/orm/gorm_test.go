package orm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Widget is the GORM model; AutoMigrate creates its table per tenant.
type Widget struct {
	ID     int64  `gorm:"primaryKey"`
	Tenant string `gorm:"not null;index"`
	Name   string `gorm:"not null"`
	Qty    int
}

func (Widget) TableName() string { return "gorm_widgets" }

// WidgetV2 is the next version of Widget: AutoMigrate adds a column.
type WidgetV2 struct {
	ID     int64  `gorm:"primaryKey"`
	Tenant string `gorm:"not null;index"`
	Name   string `gorm:"not null"`
	Qty    int
	Color  string `gorm:"not null;default:'blue'"`
}

func (WidgetV2) TableName() string { return "gorm_widgets" }

// openGorm is the setup a GORM user writes: tenantpg's *sql.DB as the
// dialector's Conn, and a default gorm.Config (its tenant-less automatic
// ping succeeds). The tests only silence GORM's logger for the calls that
// fail on purpose.
func openGorm(t *testing.T, sqlDB *sql.DB, cfg *gorm.Config) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), cfg)
	if err != nil {
		t.Fatalf("gorm.Open: %v", err)
	}
	return db
}

var errRollback = errors.New("roll back on purpose")

// gormCRUD creates, reads, updates and deletes widgets of one tenant and
// runs transactions (committed, nested and rolled back), checking every row
// it sees belongs to the tenant. It leaves rounds/2 widgets.
func gormCRUD(ctx context.Context, db *gorm.DB, tenant string) error {
	g := db.WithContext(ctx)
	if err := g.Where("true").Delete(&Widget{}).Error; err != nil { // clean slate
		return err
	}
	for i := range rounds {
		w := Widget{Tenant: tenant, Name: fmt.Sprintf("w%d", i), Qty: i}
		if err := g.Create(&w).Error; err != nil {
			return fmt.Errorf("create: %w", err)
		}
		var got Widget
		if err := g.First(&got, w.ID).Error; err != nil {
			return fmt.Errorf("first: %w", err)
		}
		if got.Tenant != tenant || got.Name != w.Name {
			return fmt.Errorf("read back %+v, want tenant %s name %s", got, tenant, w.Name)
		}
		if err := g.Model(&got).Update("qty", gorm.Expr("qty + ?", 100)).Error; err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if err := g.First(&got, w.ID).Error; err != nil || got.Qty != i+100 {
			return fmt.Errorf("after update qty %d, %v", got.Qty, err)
		}
		err := g.Transaction(func(tx *gorm.DB) error {
			a := Widget{Tenant: tenant, Name: "tx"}
			if err := tx.Create(&a).Error; err != nil {
				return err
			}
			// A nested transaction is a savepoint on the same connection.
			if err := tx.Transaction(func(tx2 *gorm.DB) error {
				if err := tx2.Create(&Widget{Tenant: tenant, Name: "savepoint"}).Error; err != nil {
					return err
				}
				return errRollback
			}); !errors.Is(err, errRollback) {
				return fmt.Errorf("nested: %v", err)
			}
			return tx.Delete(&Widget{}, a.ID).Error
		})
		if err != nil {
			return fmt.Errorf("transaction: %w", err)
		}
		err = g.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&Widget{Tenant: tenant, Name: "rolled back"}).Error; err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			return fmt.Errorf("rolled back transaction: %v", err)
		}
		if i%2 == 1 {
			if res := g.Delete(&Widget{}, w.ID); res.Error != nil || res.RowsAffected != 1 {
				return fmt.Errorf("delete: %d rows, %v", res.RowsAffected, res.Error)
			}
		}
	}
	var all []Widget
	if err := g.Order("id").Find(&all).Error; err != nil {
		return err
	}
	if len(all) != rounds/2 {
		return fmt.Errorf("%d widgets left, want %d: %+v", len(all), rounds/2, all)
	}
	for _, w := range all {
		if w.Tenant != tenant {
			return fmt.Errorf("saw widget %d of tenant %q", w.ID, w.Tenant)
		}
		if w.Name == "tx" || w.Name == "savepoint" || w.Name == "rolled back" {
			return fmt.Errorf("widget %q survived", w.Name)
		}
	}
	return nil
}

// TestGormSupavisorRoute runs GORM through PgBouncer with one login per
// tenant (tenant_user={user}.{tenant}): per-tenant AutoMigrate, then CRUD
// and transactions for 12 tenants at once.
func TestGormSupavisorRoute(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	userSchemas(t, env, ids)
	ctx := testCtx(t)

	sqlDB := openDB(t, bouncerUserDSN(env))
	db := openGorm(t, sqlDB, &gorm.Config{})

	// Migrations run per tenant: each creates the table in the tenant's own
	// schema. The second version adds a column; the migrator's ColumnTypes
	// query carries pgx.QueryExecModeSimpleProtocol as its first argument
	// and works through PgBouncer.
	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		if err := db.WithContext(ctx).AutoMigrate(&Widget{}); err != nil {
			return err
		}
		return db.WithContext(ctx).AutoMigrate(&WidgetV2{})
	})
	for _, id := range ids {
		var n int
		var col string
		err := db.WithContext(tenantpg.WithTenant(ctx, id)).Raw(
			`select count(*), min(column_name) from information_schema.columns
			 where table_schema = current_schema() and table_name = 'gorm_widgets' and column_name = 'color'`).Row().Scan(&n, &col)
		if err != nil || n != 1 {
			t.Fatalf("tenant %s: color column %d, %v", id, n, err)
		}
		var schema, user string
		if err := db.WithContext(tenantpg.WithTenant(ctx, id)).Raw("select current_schema(), current_user").Row().Scan(&schema, &user); err != nil {
			t.Fatal(err)
		}
		if want := pgtest.TenantRole(id); schema != want || user != want {
			t.Fatalf("tenant %s: schema %q user %q, want %q", id, schema, user, want)
		}
	}

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return gormCRUD(ctx, db, tenant)
	})
	checkPools(t, sqlDB, ids)

	// A tenant's login cannot even name another tenant's table.
	quiet := db.Session(&gorm.Session{Logger: logger.Discard})
	other := pgx.Identifier{pgtest.TenantRole(ids[1]), "gorm_widgets"}.Sanitize()
	var n int64
	err := quiet.WithContext(tenantpg.WithTenant(ctx, ids[0])).Table(other).Count(&n).Error
	if sqlState(err) != "42501" {
		t.Fatalf("reading %s as %s: %v, want permission denied (42501)", other, ids[0], err)
	}
}

// TestGormPrepareStmtDirectSchema runs GORM's PrepareStmt mode on the
// direct schema route: GORM caches one *sql.Stmt per SQL text for all
// tenants, and database/sql prepares it on each tenant's connection with
// the context of the call, so every execution runs for the caller's tenant.
func TestGormPrepareStmtDirectSchema(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)

	sqlDB := openDB(t, directSchemaDSN(env))
	db := openGorm(t, sqlDB, &gorm.Config{PrepareStmt: true})

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return db.WithContext(ctx).AutoMigrate(&Widget{})
	})
	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return gormCRUD(ctx, db, tenant)
	})
	checkPools(t, sqlDB, ids)

	// One cached statement, run for tenant after tenant.
	for range 3 {
		for _, id := range ids {
			var schema string
			if err := db.WithContext(tenantpg.WithTenant(ctx, id)).Raw("select current_schema()").Scan(&schema).Error; err != nil {
				t.Fatal(err)
			}
			if schema != id {
				t.Fatalf("prepared statement for tenant %s ran in schema %q", id, schema)
			}
		}
	}
	ps, ok := db.ConnPool.(*gorm.PreparedStmtDB)
	if !ok {
		t.Fatalf("ConnPool is %T, want *gorm.PreparedStmtDB", db.ConnPool)
	}
	if _, ok := ps.Stmts.Get("select current_schema()"); !ok {
		t.Fatal("GORM did not cache the statement: PrepareStmt not exercised")
	}
}

// TestGormConnectionSession pins one connection with db.Connection: session
// state (a temporary table, a setting) lives across the calls in it, on the
// tenant's own connection.
func TestGormConnectionSession(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := testCtx(t)
	db := openGorm(t, openDB(t, directSchemaDSN(env)), &gorm.Config{})

	perTenant(t, ctx, ids, func(ctx context.Context, tenant string) error {
		return db.WithContext(ctx).Connection(func(tx *gorm.DB) error {
			if err := tx.Exec("create temporary table scratch as select tenant, val from items").Error; err != nil {
				return err
			}
			if err := tx.Exec("select set_config('application_name', ?, false)", "gorm-"+tenant).Error; err != nil {
				return err
			}
			var app, schema string
			var rows int
			var owners []string
			if err := tx.Raw("select current_setting('application_name'), current_schema(), (select count(*) from scratch)").
				Row().Scan(&app, &schema, &rows); err != nil {
				return err
			}
			if err := tx.Raw("select tenant from scratch").Scan(&owners).Error; err != nil {
				return err
			}
			if app != "gorm-"+tenant || schema != tenant || rows == 0 || rows != len(owners) {
				return fmt.Errorf("session: application_name %q, schema %q, %d scratch rows", app, schema, rows)
			}
			if err := checkOwn(tenant, owners); err != nil {
				return err
			}
			// Session state outlives the checkout in the tenant's pool
			// (pgxpool does not reset sessions): clean up.
			return tx.Exec("discard temp; reset application_name").Error
		})
	})

	// Why the reset matters: a setting left behind stays on the connection
	// in the tenant's pool, for the tenant's next checkout.
	ctx0 := tenantpg.WithTenant(ctx, ids[0])
	err := db.WithContext(ctx0).Connection(func(tx *gorm.DB) error {
		return tx.Exec("select set_config('application_name', 'left behind', false)").Error
	})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, _ := db.DB()
	pool, err := tenantpg.Pool(ctx0, sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	leftBehind := 0
	for _, c := range pool.AcquireAllIdle(ctx0) {
		var app string
		if err := c.QueryRow(ctx0, "select current_setting('application_name')").Scan(&app); err != nil {
			t.Fatal(err)
		}
		if app == "left behind" {
			leftBehind++
			if _, err := c.Exec(ctx0, "reset application_name"); err != nil {
				t.Fatal(err)
			}
		}
		c.Release()
	}
	if leftBehind != 1 {
		t.Fatalf("%d idle connections kept the setting, want 1 (pgxpool does not reset sessions)", leftBehind)
	}
}

// TestGormExecModeArgument checks the interplay of GORM's DriverName and
// pgx exec modes through tenantpg. With DriverName "" (or "pgx") GORM's
// migrator passes pgx.QueryExecModeSimpleProtocol as the first query
// argument of its ColumnTypes query; tenantpg's connections are pgx's own,
// so pgx takes it as an option and never sends it as a parameter. The proof
// is on the direct route, whose default exec mode (cache_statement) leaves
// a named prepared statement in the session for every extended-protocol
// query: there is none for the ColumnTypes query with DriverName "", and
// one with DriverName "postgres", which turns the option off.
func TestGormExecModeArgument(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	ctx := tenantpg.WithTenant(testCtx(t), ids[0])
	sqlDB, rec := openTraced(t, directSchemaDSN(env))

	for _, tc := range []struct {
		driverName string
		simple     bool
	}{{"", true}, {"pgx", true}, {"postgres", false}} {
		db := openGorm(t, sqlDB, &gorm.Config{})
		db.Dialector.(*postgres.Dialector).DriverName = tc.driverName // as postgres.Config{DriverName: ...}
		if err := db.WithContext(ctx).AutoMigrate(&Widget{}); err != nil {
			t.Fatal(err)
		}
		const columnTypesSQL = `SELECT * FROM "gorm_widgets" LIMIT $1`
		before := len(rec.matching(columnTypesSQL))
		var prepared int
		err := db.WithContext(ctx).Connection(func(tx *gorm.DB) error {
			cols, err := tx.Migrator().ColumnTypes(&Widget{})
			if err != nil {
				return err
			}
			if len(cols) != 4 {
				return fmt.Errorf("%d column types, want 4", len(cols))
			}
			return tx.Raw("select count(*) from pg_prepared_statements where statement = ?", columnTypesSQL).Scan(&prepared).Error
		})
		if err != nil {
			t.Fatalf("DriverName %q: %v", tc.driverName, err)
		}
		calls := rec.matching(columnTypesSQL)[before:]
		if len(calls) != 1 {
			t.Fatalf("DriverName %q: ColumnTypes query ran %d times", tc.driverName, len(calls))
		}
		// pgx's leading option arguments (database/sql's stdlib adds
		// QueryResultFormatsByOID), then the statement's parameters.
		args, simple := calls[0].Args, false
	options:
		for len(args) > 0 {
			switch a := args[0].(type) {
			case pgx.QueryResultFormatsByOID:
			case pgx.QueryExecMode:
				simple = a == pgx.QueryExecModeSimpleProtocol
			default:
				break options
			}
			args = args[1:]
		}
		if simple != tc.simple || len(args) != 1 || fmt.Sprint(args[0]) != "1" {
			t.Fatalf("DriverName %q: pgx received %#v: simple protocol option %v, parameters %v", tc.driverName, calls[0].Args, simple, args)
		}
		if want := map[bool]int{true: 0, false: 1}[tc.simple]; prepared != want {
			t.Fatalf("DriverName %q: %d prepared statements for the ColumnTypes query, want %d", tc.driverName, prepared, want)
		}
	}
}

// TestGormWithoutContext: GORM without WithContext has no tenant. gorm.Open
// pings without one and succeeds (and so does not close the *sql.DB); every
// query, transaction and migration fails with tenantpg.ErrNoTenant and
// opens nothing.
func TestGormWithoutContext(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	sqlDB := openDB(t, bouncerDatabaseDSN(env))
	db := openGorm(t, sqlDB, &gorm.Config{Logger: logger.Discard})

	var w Widget
	var n int64
	for name, err := range map[string]error{
		"First":       db.Table("items").First(&w).Error,
		"Count":       db.Table("items").Count(&n).Error,
		"Create":      db.Create(&Widget{Tenant: "x"}).Error,
		"Exec":        db.Exec("delete from items").Error,
		"Transaction": db.Transaction(func(tx *gorm.DB) error { return nil }),
		"AutoMigrate": db.AutoMigrate(&Widget{}),
		"Connection":  db.Connection(func(tx *gorm.DB) error { return tx.Exec("select 1").Error }),
	} {
		if !errors.Is(err, tenantpg.ErrNoTenant) {
			t.Errorf("%s without WithContext: %v, want ErrNoTenant", name, err)
		}
	}
	if st := stats(t, sqlDB); st.Dials != 0 || st.NoTenant == 0 {
		t.Fatalf("tenant-less GORM calls: %d dials, %d tenant-less checkouts", st.Dials, st.NoTenant)
	}
	// The same *sql.DB still serves tenants.
	if err := db.WithContext(tenantpg.WithTenant(context.Background(), ids[0])).Table("items").Count(&n).Error; err != nil || n == 0 {
		t.Fatalf("with a tenant: %d rows, %v", n, err)
	}
}

// TestGormPrepareStmtThroughBouncer118 runs GORM's PrepareStmt mode through
// PgBouncer 1.18 in transaction mode, 8 goroutines over the tenants at once.
// A named prepared statement would fail there (42P05 or 26000: prepared on
// another server connection); tenantpg's *sql.Stmt keeps no statement on
// the server and runs its query in the route's exec mode, so every
// execution must succeed in the caller's tenant database.
func TestGormPrepareStmtThroughBouncer118(t *testing.T) {
	env := pgtest.Shared(t)
	ids := provision(t, env)
	base := testCtx(t)
	db := openGorm(t, openDB(t, bouncerDatabaseDSN(env)), &gorm.Config{PrepareStmt: true, Logger: logger.Discard})

	const workers, ops = 8, 200
	const query = "select current_database() where ? >= 0"
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			id := ids[w%len(ids)]
			ctx := tenantpg.WithTenant(base, id)
			for i := range ops {
				var got string
				if err := db.WithContext(ctx).Raw(query, i).Scan(&got).Error; err != nil {
					errs <- fmt.Errorf("worker %d op %d for %s: %w", w, i, id, err)
					return
				}
				if got != id {
					errs <- fmt.Errorf("worker %d op %d for %s ran in database %q", w, i, id, got)
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
	ps, ok := db.ConnPool.(*gorm.PreparedStmtDB)
	if !ok {
		t.Fatalf("ConnPool is %T, want *gorm.PreparedStmtDB", db.ConnPool)
	}
	if _, ok := ps.Stmts.Get("select current_database() where $1 >= 0"); !ok {
		t.Fatal("GORM did not cache the statement: PrepareStmt not exercised")
	}
}
