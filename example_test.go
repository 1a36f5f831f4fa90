package tenantpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
)

// Supavisor identifies the tenant by the login "<user>.<tenant>" on its
// transaction port. One *sql.DB serves every tenant.
func Example_supavisor() {
	db, err := sql.Open("tenantpg",
		"postgres://postgres:secret@supavisor.internal:6543/postgres?tenant_user={user}.{tenant}")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := tenantpg.WithTenant(context.Background(), "acme")
	var n int
	if err := db.QueryRowContext(ctx, "select count(*) from orders").Scan(&n); err != nil {
		log.Fatal(err)
	}
}

// PgBouncer routes by database alias; with a forced user per alias, each
// tenant's role and search_path come from PgBouncer's configuration, and the
// session's user and database are not the ones tenantpg asked for, so the
// identity check is off (docs/pgbouncer.md).
func Example_pgbouncer() {
	db, err := sql.Open("tenantpg",
		"postgres://app:secret@pgbouncer.internal:6432/app?tenant_database=tenant_{tenant}&tenant_verify=off&tenant_max_conns=64&pool_max_conns=4")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	db.SetMaxIdleConns(tenantpg.IdleHandles) // idle handles hold no server connection

	ctx := tenantpg.WithTenant(context.Background(), "globex")
	if _, err := db.ExecContext(ctx, "update accounts set active = true where id = $1", 42); err != nil {
		log.Fatal(err)
	}
}

// Row-level security: every connection of a tenant starts with the setting
// app.tenant_id set to the tenant id, for policies such as
// USING (tenant_id = current_setting('app.tenant_id')).
func Example_rowLevelSecurity() {
	db, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_setting=app.tenant_id")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rows, err := db.QueryContext(tenantpg.WithTenant(context.Background(), "initech"), "select id from documents")
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
}

// A resolver maps each tenant to its own credentials and host: it receives a
// copy of the base pool configuration and may change anything in it.
func ExampleOpenDB_resolver() {
	base, err := pgxpool.ParseConfig("postgres://placeholder@localhost:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	type creds struct {
		host, user, password string
	}
	vault := map[string]creds{
		"acme":    {"db-eu.internal", "acme_rw", "s1"},
		"globex":  {"db-us.internal", "globex_rw", "s2"},
		"initech": {"db-us.internal", "initech_rw", "s3"},
	}
	db, err := tenantpg.OpenDB(&tenantpg.Config{
		Pool:     base,
		MaxConns: 100,
		Resolve: func(ctx context.Context, tenant string, pc *pgxpool.Config) error {
			c, ok := vault[tenant]
			if !ok {
				return fmt.Errorf("no credentials for %q: %w", tenant, tenantpg.ErrInvalidTenant)
			}
			pc.ConnConfig.Host, pc.ConnConfig.User, pc.ConnConfig.Password = c.host, c.user, c.password
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// Nothing is dialed until a query; Pool shows where a tenant goes.
	pool, err := tenantpg.Pool(tenantpg.WithTenant(context.Background(), "acme"), db)
	if err != nil {
		log.Fatal(err)
	}
	cc := pool.Config().ConnConfig
	fmt.Println("acme:", cc.User+"@"+cc.Host)
	_, err = tenantpg.Pool(tenantpg.WithTenant(context.Background(), "hooli"), db)
	fmt.Println("hooli:", errors.Is(err, tenantpg.ErrInvalidTenant))
	// Output:
	// acme: acme_rw@db-eu.internal
	// hooli: true
}

// ParseConfig shows what a DSN turns into: tenant parameters are tenantpg's,
// the rest is pgxpool's, and a pooler route gets the "exec" query mode.
func ExampleParseConfig() {
	cfg, err := tenantpg.ParseConfig(
		"postgres://app:secret@localhost:6432/app?tenant_user={user}.{tenant}&tenant_max_conns=32&sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("login template:", cfg.User)
	fmt.Println("budget:", cfg.MaxConns)
	fmt.Println("per-tenant pool:", cfg.Pool.MaxConns)
	fmt.Println("exec mode:", cfg.Pool.ConnConfig.DefaultQueryExecMode)

	_, err = tenantpg.ParseConfig("postgres://app:secret@localhost:6432/app")
	fmt.Println(errors.Is(err, tenantpg.ErrInvalidConfig))
	// Output:
	// login template: {user}.{tenant}
	// budget: 32
	// per-tenant pool: 4
	// exec mode: exec
	// true
}

// Bad tenant ids and tenant-less contexts fail before any network I/O.
func Example_errors() {
	db, err := sql.Open("tenantpg", "postgres://app@127.0.0.1:1/app?tenant_user={user}.{tenant}")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	_, err = db.ExecContext(ctx, "select 1")
	fmt.Println(errors.Is(err, tenantpg.ErrNoTenant))

	_, err = db.ExecContext(tenantpg.WithTenant(ctx, "acme.eu"), "select 1")
	fmt.Println(errors.Is(err, tenantpg.ErrInvalidTenant))

	// gorm.Open and sqlx.Connect ping without a tenant: that succeeds.
	fmt.Println(db.Ping())

	st, _ := tenantpg.DBStats(db)
	fmt.Println("dials:", st.Dials)
	// Output:
	// true
	// true
	// <nil>
	// dials: 0
}

// Pool gives the tenant's pgxpool.Pool for pgx-native work; conn.Raw gives
// the *pgx.Conn of a database/sql session, for COPY or LISTEN.
func ExamplePool() {
	db, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_schema={tenant}")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := tenantpg.WithTenant(context.Background(), "acme")

	pool, err := tenantpg.Pool(ctx, db)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "notify jobs"); err != nil {
		log.Fatal(err)
	}

	conn, err := db.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(driverConn any) error {
		pgxConn, err := driverConn.(*tenantpg.Conn).ConnContext(ctx)
		if err != nil {
			return err // ErrNoTenant, a *BudgetError, ...
		}
		_, err = pgxConn.Exec(ctx, "listen jobs")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}

// DBStats reports the budget and every tenant pool.
func ExampleDBStats() {
	db, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_user={user}.{tenant}&tenant_max_conns=50")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	st, err := tenantpg.DBStats(db)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d/%d connections, %d waits, %d pools\n", st.OpenConns, st.MaxConns, st.BudgetWaits, len(st.Pools))
	if p, ok := st.Tenant("acme"); ok {
		fmt.Println("acme:", p.Target, p.Pool.AcquiredConns(), "in use")
	}
	// Output:
	// 0/50 connections, 0 waits, 0 pools
}

// A tenant has left: close its connections so that its database can be
// dropped, instead of waiting for tenant_pool_idle. The same call makes a
// tenant moved to another server (Resolve's new answer) connect there.
func ExampleConnector_Forget() {
	db, err := sql.Open("tenantpg", "postgres://app:secret@db.internal:5432/app?tenant_database=tenant_{tenant}")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	c, err := tenantpg.ConnectorOf(db)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Forget(ctx, "acme"); err != nil {
		log.Fatal(err) // ctx's error: a transaction of acme's is still open
	}
	fmt.Println("no connection to tenant_acme left")
	// Output:
	// no connection to tenant_acme left
}
