package integration

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// BenchmarkExecMode measures one tenant's QueryRow("select $1::int, $2::text")
// under each pgx exec mode that is safe through a transaction pooler, direct
// and through PgBouncer, next to stdlib.OpenDBFromPool on the same route.
//
//	go test ./integration -run '^$' -bench ExecMode -benchtime 3000x
func BenchmarkExecMode(b *testing.B) {
	env := pgtest.Shared(b)
	ctx := context.Background()
	if err := env.Provision(ctx, "t01"); err != nil {
		b.Fatal(err)
	}
	routes := map[string]string{
		"direct":  env.DirectURL(env.AppUser, env.AppDatabase),
		"bouncer": env.BouncerURL(env.AppUser, env.AppDatabase),
	}
	for _, route := range []string{"direct", "bouncer"} {
		for _, mode := range []string{"exec", "cache_describe", "simple_protocol", "cache_statement"} {
			if route == "bouncer" && mode == "cache_statement" {
				continue // fails with 42P05 on PgBouncer 1.18
			}
			dsn := withParams(routes[route], "default_query_exec_mode="+mode, "pool_max_conns=4")
			b.Run(route+"/"+mode+"/tenantpg", func(b *testing.B) {
				db, err := sql.Open("tenantpg", withParams(dsn, "tenant_user={user}.{tenant}"))
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				db.SetMaxIdleConns(0)
				benchQueryRow(b, tenantpg.WithTenant(ctx, "t01"), db)
			})
			b.Run(route+"/"+mode+"/OpenDBFromPool", func(b *testing.B) {
				pool, err := pgxpool.New(ctx, withParams(dsn, "user=app.t01"))
				if err != nil {
					b.Fatal(err)
				}
				db := stdlib.OpenDBFromPool(pool)
				defer pool.Close()
				defer db.Close()
				benchQueryRow(b, ctx, db)
			})
		}
	}
}

func benchQueryRow(b *testing.B, ctx context.Context, db *sql.DB) {
	b.Helper()
	var n int
	var s string
	if err := db.QueryRowContext(ctx, "select $1::int, $2::text", 1, "x").Scan(&n, &s); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := db.QueryRowContext(ctx, "select $1::int, $2::text", i, "x").Scan(&n, &s); err != nil {
			b.Fatal(err)
		}
	}
}
