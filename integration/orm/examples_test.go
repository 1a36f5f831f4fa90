package orm

// The setup lines of docs/orms.md. These examples compile with the tests
// but do not run (no servers at these addresses); the tests in this
// package run the same lines against real servers.

import (
	"context"
	"database/sql"
	"log"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jmoiron/sqlx"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/integration/orm/ent"
	"github.com/tenantpg/tenantpg/integration/orm/sqlcdb"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
)

func Example_gorm() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles) // idle handles hold no connection
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}

	ctx := tenantpg.WithTenant(context.Background(), "acme")
	if err := db.WithContext(ctx).AutoMigrate(&Widget{}); err != nil { // per tenant
		log.Fatal(err)
	}
	err = db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return tx.Create(&Widget{Tenant: "acme", Name: "bolt"}).Error
	})
	if err != nil {
		log.Fatal(err)
	}
}

func Example_gormPrepareStmt() {
	// Any route: tenantpg's *sql.Stmt keeps no named statement on the server.
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_schema={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles)
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{PrepareStmt: true})
	if err != nil {
		log.Fatal(err)
	}
	var n int64
	db.WithContext(tenantpg.WithTenant(context.Background(), "acme")).Model(&Widget{}).Count(&n)
}

func Example_sqlx() {
	// Once, at program start: sqlx does not know the driver name "tenantpg".
	sqlx.BindDriver("tenantpg", sqlx.DOLLAR)

	x, err := sqlx.Connect("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	x.SetMaxIdleConns(tenantpg.IdleHandles)
	ctx := tenantpg.WithTenant(context.Background(), "acme")

	var items []Item
	if err := x.SelectContext(ctx, &items, x.Rebind("select id, tenant, val from items where val > ?"), 10); err != nil {
		log.Fatal(err)
	}
	if _, err := x.NamedExecContext(ctx, "insert into items (tenant, val) values (:tenant, :val)", Item{Tenant: "acme", Val: 1}); err != nil {
		log.Fatal(err)
	}
}

func Example_sqlxNewDb() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	x := sqlx.NewDb(sqlDB, "pgx") // or "postgres": names sqlx knows use $1
	_ = x
}

func Example_ent() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_schema={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles)
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.Postgres, sqlDB)))

	ctx := tenantpg.WithTenant(context.Background(), "acme")
	if _, err := client.Note.Create().SetTenant("acme").SetBody("hello").Save(ctx); err != nil {
		log.Fatal(err)
	}
}

// Example_entMigrate migrates one tenant. Atlas queries without the
// caller's context, so the migration runs on a *sql.DB bound to the
// tenant's pool; run tenants one after another.
func Example_entMigrate() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_schema={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	for _, tenant := range []string{"acme", "globex"} {
		ctx := tenantpg.WithTenant(context.Background(), tenant)
		pool, err := tenantpg.Pool(ctx, sqlDB)
		if err != nil {
			log.Fatal(err)
		}
		tenantDB := stdlib.OpenDBFromPool(pool) // every call runs for this tenant
		client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.Postgres, tenantDB)))
		err = client.Schema.Create(ctx)
		tenantDB.Close() // leaves the tenant's pool open
		if err != nil {
			log.Fatal(err)
		}
	}
}

func Example_bun() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles)
	db := bun.NewDB(sqlDB, pgdialect.New())

	ctx := tenantpg.WithTenant(context.Background(), "acme")
	err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, err := tx.NewInsert().Model(&BunItem{Tenant: "acme", Val: 1}).Exec(ctx)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}

func Example_sqlc() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles)
	q := sqlcdb.New(sqlDB)

	ctx := tenantpg.WithTenant(context.Background(), "acme")
	items, err := q.ListItems(ctx)
	if err != nil {
		log.Fatal(err)
	}
	tx, err := sqlDB.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := q.WithTx(tx).DeleteItem(ctx, items[0].ID); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
}

func Example_sqlcPrepared() {
	sqlDB, err := sql.Open("tenantpg", "postgres://app:secret@pgbouncer.internal:6432/app?tenant_database={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	sqlDB.SetMaxIdleConns(tenantpg.IdleHandles)
	ctx := context.Background()

	q, err := sqlcdb.Prepare(tenantpg.WithTenant(ctx, "acme"), sqlDB) // checks every query on acme's connection
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	items, err := q.ListItems(tenantpg.WithTenant(ctx, "globex")) // globex's items
	if err != nil {
		log.Fatal(err)
	}
	log.Println(len(items))
}
