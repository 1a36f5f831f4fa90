package integration

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// tenantTracer records the tenant pgx's context carries at every query.
type tenantTracer struct {
	mu      sync.Mutex
	tenants []string
}

func (r *tenantTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t, _ := tenantpg.TenantFromContext(ctx)
	r.mu.Lock()
	r.tenants = append(r.tenants, t)
	r.mu.Unlock()
	return ctx
}

func (r *tenantTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestTracerSeesTheTenant checks that a pgx query tracer finds the tenant in
// the context of every query, including one whose tenant was set on
// context.Background(), which tenantpg hands pgx as context.Background()
// only when no tracer could read it (Conn.pgxCtx).
func TestTracerSeesTheTenant(t *testing.T) {
	env := pgtest.Shared(t)
	ids := tenants(t, env, 1)
	cfg, err := tenantpg.ParseConfig(withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}"))
	if err != nil {
		t.Fatal(err)
	}
	rec := &tenantTracer{}
	cfg.Pool.ConnConfig.Tracer = rec
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, parent := range []context.Context{context.Background(), testCtx(t)} {
		ctx := tenantpg.WithTenant(parent, ids[0])
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := queryString(ctx, db, "select current_user"); err != nil {
			t.Fatal(err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.tenants) < 4 {
		t.Fatalf("tracer saw %d queries, want at least 4", len(rec.tenants))
	}
	for i, got := range rec.tenants {
		if got != ids[0] {
			t.Fatalf("query %d: tracer's context has tenant %q, want %q", i, got, ids[0])
		}
	}
}
