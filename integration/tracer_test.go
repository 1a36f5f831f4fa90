package integration

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// tenantSeen records the tenant pgx's context carries at every query, as a
// tracer and as a query rewriter.
type tenantSeen struct {
	mu      sync.Mutex
	tenants []string
}

func (r *tenantSeen) add(ctx context.Context) {
	t, _ := tenantpg.TenantFromContext(ctx)
	r.mu.Lock()
	r.tenants = append(r.tenants, t)
	r.mu.Unlock()
}

func (r *tenantSeen) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.add(ctx)
	return ctx
}

func (r *tenantSeen) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *tenantSeen) RewriteQuery(ctx context.Context, _ *pgx.Conn, sql string, _ []any) (string, []any, error) {
	r.add(ctx)
	return sql, nil, nil
}

// check fails unless at least n queries were seen, each with tenant.
func (r *tenantSeen) check(t *testing.T, n int, tenant string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.tenants) < n {
		t.Fatalf("saw %d queries, want at least %d", len(r.tenants), n)
	}
	for i, got := range r.tenants {
		if got != tenant {
			t.Fatalf("query %d: pgx's context has tenant %q, want %q", i, got, tenant)
		}
	}
}

// TestPgxSeesTheTenant checks that what pgx calls with a query's context (a
// query tracer, set on the pool's configuration or by a BeforeConnect hook
// on each connection, and a query rewriter) finds the tenant there,
// including under a tenant set on context.Background(), which tenantpg
// hands pgx as context.Background() only when none of these could read it
// (Conn.pgxCtx).
func TestPgxSeesTheTenant(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	dsn := withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}")
	parents := []context.Context{context.Background(), testCtx(t)}
	for _, mode := range []string{"pool tracer", "BeforeConnect tracer", "query rewriter"} {
		t.Run(mode, func(t *testing.T) {
			cfg, err := tenantpg.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			rec := &tenantSeen{}
			switch mode {
			case "pool tracer":
				cfg.Pool.ConnConfig.Tracer = rec
			case "BeforeConnect tracer":
				cfg.Pool.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
					cc.Tracer = rec
					return nil
				}
			}
			db, err := tenantpg.OpenDB(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			for _, parent := range parents {
				ctx := tenantpg.WithTenant(parent, ids[0])
				var args []any
				if mode == "query rewriter" {
					args = []any{rec}
				}
				if _, err := db.ExecContext(ctx, "select 1", args...); err != nil {
					t.Fatal(err)
				}
				var user string
				if err := db.QueryRowContext(ctx, "select current_user", args...).Scan(&user); err != nil || user != "app."+ids[0] {
					t.Fatalf("current_user %q, %v", user, err)
				}
			}
			rec.check(t, 2*len(parents), ids[0])
		})
	}
}
