package integration

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// BenchmarkStmt executes one *sql.Stmt (db.PrepareContext once, then
// QueryRowContext per operation, each a checkout) for one tenant, tenantpg
// against stdlib.OpenDB on the same route and exec mode. stdlib.OpenDB keeps
// its named prepared statement on each connection; tenantpg runs the
// statement's query on each checkout's connection in that connection's exec
// mode, so the ratio of the two is what a *sql.Stmt costs through tenantpg.
//
//	go test ./integration -run '^$' -bench Stmt -benchtime 3000x
func BenchmarkStmt(b *testing.B) {
	env := pgtest.Shared(b)
	ctx := context.Background()
	if err := env.Provision(ctx, "t01"); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"cache_statement", "exec"} {
		dsn := withParams(env.DirectURL(env.AppUser, env.AppDatabase), "default_query_exec_mode="+mode)
		b.Run(mode+"/OpenDB", func(b *testing.B) {
			cc, err := pgx.ParseConfig(withParams(dsn, "user=app.t01"))
			if err != nil {
				b.Fatal(err)
			}
			db := stdlib.OpenDB(*cc)
			defer db.Close()
			benchStmt(b, ctx, db)
		})
		b.Run(mode+"/tenantpg", func(b *testing.B) {
			cfg, err := tenantpg.ParseConfig(withParams(dsn, "tenant_user={user}.{tenant}", "pool_max_conns=4"))
			if err != nil {
				b.Fatal(err)
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			benchStmt(b, tenantpg.WithTenant(ctx, "t01"), db)
		})
	}
}

func benchStmt(b *testing.B, ctx context.Context, db *sql.DB) {
	b.Helper()
	st, err := db.PrepareContext(ctx, "select $1::int")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var n int
	b.ResetTimer()
	for i := range b.N {
		if err := st.QueryRowContext(ctx, i).Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n != i {
			b.Fatalf("got %d, want %d", n, i)
		}
	}
}
