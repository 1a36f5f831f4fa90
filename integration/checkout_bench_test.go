package integration

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// BenchmarkCheckout measures the routing path of one checkout (db.Conn +
// Close, no query) and one QueryRow, tenantpg against stdlib.OpenDBFromPool
// and stdlib.OpenDB on the same server. The difference of the Checkout
// figures is what tenantpg's routing costs per checkout.
//
//	go test ./integration -run '^$' -bench Checkout -benchmem
func BenchmarkCheckout(b *testing.B) {
	env := pgtest.Shared(b)
	ctx := context.Background()
	if err := env.Provision(ctx, "t01"); err != nil {
		b.Fatal(err)
	}
	url := withParams(env.DirectURL(env.AppUser, env.AppDatabase), "pool_max_conns=8")
	tctx := tenantpg.WithTenant(ctx, "t01")

	open := map[string]func(b *testing.B) (*sql.DB, context.Context, func()){
		"tenantpg": func(b *testing.B) (*sql.DB, context.Context, func()) {
			cfg, err := tenantpg.ParseConfig(withParams(url, "tenant_user={user}.{tenant}", "default_query_exec_mode=cache_statement"))
			if err != nil {
				b.Fatal(err)
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				b.Fatal(err)
			}
			return db, tctx, func() { db.Close() }
		},
		"tenantpg-budget": func(b *testing.B) (*sql.DB, context.Context, func()) {
			cfg, err := tenantpg.ParseConfig(withParams(url, "tenant_user={user}.{tenant}", "tenant_max_conns=64", "default_query_exec_mode=cache_statement"))
			if err != nil {
				b.Fatal(err)
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				b.Fatal(err)
			}
			return db, tctx, func() { db.Close() }
		},
		"tenantpg-idle": func(b *testing.B) (*sql.DB, context.Context, func()) {
			cfg, err := tenantpg.ParseConfig(withParams(url, "tenant_user={user}.{tenant}", "default_query_exec_mode=cache_statement"))
			if err != nil {
				b.Fatal(err)
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				b.Fatal(err)
			}
			db.SetMaxIdleConns(8)
			return db, tctx, func() { db.Close() }
		},
		"OpenDBFromPool": func(b *testing.B) (*sql.DB, context.Context, func()) {
			pool, err := pgxpool.New(ctx, withParams(url, "user=app.t01"))
			if err != nil {
				b.Fatal(err)
			}
			db := stdlib.OpenDBFromPool(pool)
			return db, ctx, func() { db.Close(); pool.Close() }
		},
		"OpenDB": func(b *testing.B) (*sql.DB, context.Context, func()) {
			cc, err := pgx.ParseConfig(withParams(env.DirectURL("app.t01", env.AppDatabase)))
			if err != nil {
				b.Fatal(err)
			}
			db := stdlib.OpenDB(*cc)
			db.SetMaxOpenConns(8)
			db.SetMaxIdleConns(8)
			return db, ctx, func() { db.Close() }
		},
	}
	for _, name := range []string{"OpenDBFromPool", "tenantpg", "tenantpg-budget", "tenantpg-idle", "OpenDB"} {
		b.Run("Checkout/"+name, func(b *testing.B) {
			db, ctx, done := open[name](b)
			defer done()
			b.ReportAllocs()
			for b.Loop() {
				c, err := db.Conn(ctx)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
		b.Run("QueryRow/"+name, func(b *testing.B) {
			db, ctx, done := open[name](b)
			defer done()
			benchQueryRow(b, ctx, db)
		})
		b.Run("QueryRow8/"+name, func(b *testing.B) {
			db, ctx, done := open[name](b)
			defer done()
			b.ReportAllocs()
			b.SetParallelism(4) // 8 workers on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				var n int
				for pb.Next() {
					if err := db.QueryRowContext(ctx, "select $1::int", 7).Scan(&n); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
