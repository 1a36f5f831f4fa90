package tenantpg

import (
	"context"
	"database/sql/driver"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestPgxCtxHidesOnlyABareTenant checks when a handle gives pgx
// context.Background() instead of the caller's context: only for a tenant
// set directly on context.Background() (nothing to cancel, no other value),
// on a connection without a query tracer and for arguments without a
// pgx.QueryRewriter, either of which could read the tenant.
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
		args       []driver.NamedValue
		background bool
	}{
		{"tenant on Background", bare, WithTenant(bg, "acme"), nil, true},
		{"tenant on Background, plain arguments", bare, WithTenant(bg, "acme"), []driver.NamedValue{{Ordinal: 1, Value: int64(1)}}, true},
		{"tenant on Background, a query rewriter", bare, WithTenant(bg, "acme"), []driver.NamedValue{{Ordinal: 1, Value: pgx.NamedArgs{"a": 1}}}, false},
		{"tenant on Background, a query rewriter after an exec mode", bare, WithTenant(bg, "acme"),
			[]driver.NamedValue{{Ordinal: 1, Value: pgx.QueryExecModeExec}, {Ordinal: 2, Value: pgx.NamedArgs{"a": 1}}}, false},
		{"tenant on Background, an exec mode, plain arguments", bare, WithTenant(bg, "acme"),
			[]driver.NamedValue{{Ordinal: 1, Value: pgx.QueryExecModeExec}, {Ordinal: 2, Value: int64(1)}}, true},
		{"tenant on Background, a rewriter-typed value after a plain argument", bare, WithTenant(bg, "acme"),
			[]driver.NamedValue{{Ordinal: 1, Value: int64(1)}, {Ordinal: 2, Value: pgx.NamedArgs{"a": 1}}}, true},
		{"tenant on a cancellable context", bare, WithTenant(cancellable, "acme"), nil, false},
		{"tenant on a context with a value", bare, WithTenant(valued, "acme"), nil, false},
		{"value on a tenant on Background", bare, context.WithValue(WithTenant(bg, "acme"), key{}, 2), nil, false},
		{"no tenant", bare, valued, nil, false},
		{"connection with a tracer", traced, WithTenant(bg, "acme"), nil, false},
	} {
		got := tc.h.pgxCtx(tc.ctx, tc.args)
		switch {
		case tc.background && got != bg:
			t.Errorf("%s: pgx gets %v, want context.Background()", tc.name, got)
		case !tc.background && got != tc.ctx:
			t.Errorf("%s: pgx gets %v, want the caller's context", tc.name, got)
		}
	}
}

func TestQueriesUntraced(t *testing.T) {
	for _, tc := range []struct {
		name string
		t    pgx.QueryTracer
		want bool
	}{
		{"none", nil, true},
		{"tenantpg's budget tracer alone", &releaseTracer{}, true},
		{"a user's inside tenantpg's", &releaseTracer{inner: userTracer{}}, false},
		{"a user's", userTracer{}, false},
	} {
		if got := queriesUntraced(tc.t); got != tc.want {
			t.Errorf("%s: queriesUntraced = %v, want %v", tc.name, got, tc.want)
		}
	}
}

type userTracer struct{}

func (userTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (userTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestBindCopiesBare(t *testing.T) {
	h := &Conn{}
	if h.bind(&pconn{bare: true}); !h.bare {
		t.Error("bound to a connection without a tracer, the handle does not say so")
	}
	if h.bind(&pconn{}); h.bare {
		t.Error("bound to a connection with a tracer, the handle says it has none")
	}
}
