package tenantpg

import (
	"context"
	"testing"
)

// TestPgxCtxHidesOnlyABareTenant checks when a handle gives pgx
// context.Background() instead of the caller's context: only for a tenant
// set directly on context.Background() (nothing to cancel, no other value)
// on a pool without a query tracer, which could read the tenant.
func TestPgxCtxHidesOnlyABareTenant(t *testing.T) {
	bg := context.Background()
	cancellable, cancel := context.WithCancel(bg)
	defer cancel()
	type key struct{}
	valued := context.WithValue(bg, key{}, 1)
	bare, traced := &Conn{bare: true}, &Conn{}
	for _, tc := range []struct {
		name       string
		h          *Conn
		ctx        context.Context
		background bool
	}{
		{"tenant on Background", bare, WithTenant(bg, "acme"), true},
		{"tenant on a cancellable context", bare, WithTenant(cancellable, "acme"), false},
		{"tenant on a context with a value", bare, WithTenant(valued, "acme"), false},
		{"value on a tenant on Background", bare, context.WithValue(WithTenant(bg, "acme"), key{}, 2), false},
		{"no tenant", bare, valued, false},
		{"pool with a tracer", traced, WithTenant(bg, "acme"), false},
	} {
		got := tc.h.pgxCtx(tc.ctx)
		switch {
		case tc.background && got != bg:
			t.Errorf("%s: pgx gets %v, want context.Background()", tc.name, got)
		case !tc.background && got != tc.ctx:
			t.Errorf("%s: pgx gets %v, want the caller's context", tc.name, got)
		}
	}
}
