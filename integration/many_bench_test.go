package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/benchops"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// BenchmarkManyTenants compares tenantpg with a map of one *sql.DB per
// tenant: 100 tenants, a random tenant per query, 8 goroutines, per-tenant
// limit 2. Use -cpuprofile to compare where each spends its CPU.
//
//	go test ./integration -run '^$' -bench ManyTenants -benchmem
func BenchmarkManyTenants(b *testing.B) {
	env := pgtest.Shared(b)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("m%03d", i)
	}
	url := env.DirectURL(env.AppUser, env.AppDatabase)
	query := "select current_setting('app.tenant_id')"
	run := func(b *testing.B, q func(ctx context.Context, t string) *sql.Row) {
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				t := ids[rand.IntN(len(ids))]
				var got string
				if err := q(ctx, t).Scan(&got); err != nil || got != t {
					b.Errorf("%s: %q %v", t, got, err)
					return
				}
			}
		})
	}
	b.Run("tenantpg", func(b *testing.B) {
		db := open(b, withParams(url, "tenant_setting=app.tenant_id", "pool_max_conns=2"))
		db.SetMaxIdleConns(tenantpg.IdleHandles) // as OpenDB does
		run(b, func(ctx context.Context, t string) *sql.Row {
			return db.QueryRowContext(tenantpg.WithTenant(ctx, t), query)
		})
	})
	b.Run("map", func(b *testing.B) {
		base, err := pgx.ParseConfig(url)
		if err != nil {
			b.Fatal(err)
		}
		dbs := benchops.MapOfDBs(base, ids, 2)
		for _, db := range dbs {
			defer db.Close()
		}
		run(b, func(ctx context.Context, t string) *sql.Row { return dbs[t].QueryRowContext(ctx, query) })
	})
}
