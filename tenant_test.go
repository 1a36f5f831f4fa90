package tenantpg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

func TestWithTenant(t *testing.T) {
	ctx := context.Background()
	if _, ok := TenantFromContext(ctx); ok {
		t.Fatal("background context has a tenant")
	}
	ctx = WithTenant(ctx, "acme")
	if id, ok := TenantFromContext(ctx); !ok || id != "acme" {
		t.Fatalf("TenantFromContext = %q, %v", id, ok)
	}
	ctx = WithTenant(ctx, "globex")
	if id, _ := TenantFromContext(ctx); id != "globex" {
		t.Fatalf("inner tenant not overriding: %q", id)
	}
	//lint:ignore SA1012 nil context is what we test
	if _, ok := TenantFromContext(nil); ok { //nolint:staticcheck
		t.Fatal("nil context has a tenant")
	}
}

func TestValidateTenant(t *testing.T) {
	re, err := compilePattern(DefaultPattern)
	if err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{"acme", "t01", "A-b_C", strings.Repeat("x", 63)} {
		if err := validateTenant(ok, re); err != nil {
			t.Errorf("validateTenant(%q) = %v", ok, err)
		}
	}
	bad := []string{"", "a.b", "a'b", `a"b`, "a b", "a;b", "a\x00b", "ácme", "аcme" /* Cyrillic a */, "a\nb", strings.Repeat("x", 300)}
	for _, id := range bad {
		if err := validateTenant(id, re); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("validateTenant(%q) = %v, want ErrInvalidTenant", id, err)
		}
	}
}

func TestCustomPatternIsAnchored(t *testing.T) {
	re, err := compilePattern(`[a-z]+`)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateTenant("abc.def", re); !errors.Is(err, ErrInvalidTenant) {
		t.Fatalf("unanchored match accepted: %v", err)
	}
	// Rules that hold whatever the pattern.
	re, _ = compilePattern(`.*`)
	for _, id := range []string{"a\x00b", "\xff"} {
		if err := validateTenant(id, re); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("validateTenant(%q) with .* = %v", id, err)
		}
	}
}

func TestResolveNameLimits(t *testing.T) {
	cfg, err := ParseConfig("postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}&tenant_database=db_{tenant}")
	if err != nil {
		t.Fatal(err)
	}
	s, err := compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, id, err := s.resolve(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if pc.ConnConfig.User != "app.acme" || pc.ConnConfig.Database != "db_acme" || id.user != "app.acme" || id.poolerUser != "app" {
		t.Fatalf("resolved %s/%s", pc.ConnConfig.User, pc.ConnConfig.Database)
	}
	if cfg.Pool.ConnConfig.User != "app" {
		t.Fatal("resolve modified the base config")
	}
	// 60 bytes of id + "app." = 64 bytes: PostgreSQL would truncate it.
	long := strings.Repeat("a", 60)
	if _, _, err := s.resolve(context.Background(), long); !errors.Is(err, ErrInvalidTenant) {
		t.Fatalf("64-byte login accepted: %v", err)
	}
	// 59 bytes fits exactly.
	if _, _, err := s.resolve(context.Background(), long[:59]); err != nil {
		t.Fatalf("63-byte login rejected: %v", err)
	}
}

// The Supavisor exception of the identity check (current_user <role> for
// the login <role>.<tenant>) holds only for the login a template ending in
// ".{tenant}" made: not for other templates, nor for a user Resolve chose.
func TestPoolerUserOnlyForDotTenantLogins(t *testing.T) {
	for _, c := range []struct {
		name, params string
		resolveUser  string // set by Resolve when not ""
		want         string
	}{
		{"dot template", "tenant_user={user}.{tenant}", "", "app"},
		{"literal role", "tenant_user=svc.{tenant}", "", "svc"},
		{"suffix after the tenant", "tenant_user={user}.{tenant}_x", "", ""},
		{"underscore", "tenant_user={user}_{tenant}", "", ""},
		{"no user template", "tenant_database={tenant}", "", ""},
		{"Resolve changed the user", "tenant_user={user}.{tenant}", "other.acme", ""},
		{"Resolve kept the user", "tenant_user={user}.{tenant}", "app.acme", "app"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig("postgres://app:pw@127.0.0.1:1/app?" + c.params)
			if err != nil {
				t.Fatal(err)
			}
			if c.resolveUser != "" {
				cfg.Resolve = func(_ context.Context, _ string, pc *pgxpool.Config) error {
					pc.ConnConfig.User = c.resolveUser
					return nil
				}
			}
			s, err := compile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, id, err := s.resolve(context.Background(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			if id.poolerUser != c.want {
				t.Fatalf("poolerUser %q for login %q, want %q", id.poolerUser, id.user, c.want)
			}
		})
	}
}

func TestTargetKeySharing(t *testing.T) {
	cfg, err := ParseConfig("postgres://app:pw@127.0.0.1:1/app?tenant_setting=app.tenant_id")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolve = nil
	s, _ := compile(cfg)
	a, _, _ := s.resolve(context.Background(), "a")
	b, _, _ := s.resolve(context.Background(), "b")
	if targetKey(a) == targetKey(b) {
		t.Fatal("tenants with different settings share a key")
	}
	a2, _, _ := s.resolve(context.Background(), "a")
	if targetKey(a) != targetKey(a2) {
		t.Fatal("same tenant resolves to different keys")
	}
}

func TestTenantContextKeepsParent(t *testing.T) {
	type other struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), other{}, "v"))
	ctx := WithTenant(parent, "acme")
	if got := ctx.Value(other{}); got != "v" {
		t.Fatalf("parent value lost: %v", got)
	}
	// Derived contexts see the tenant and the parent's cancellation.
	child, stop := context.WithTimeout(ctx, time.Hour)
	defer stop()
	if id, ok := TenantFromContext(child); !ok || id != "acme" {
		t.Fatalf("TenantFromContext(child) = %q, %v", id, ok)
	}
	cancel()
	select {
	case <-child.Done():
	case <-time.After(time.Second):
		t.Fatal("cancelling the parent did not reach a context derived from WithTenant")
	}
	if !strings.Contains(fmt.Sprint(ctx), `WithTenant("acme")`) {
		t.Fatalf("String() = %s", ctx)
	}
	if n := testing.AllocsPerRun(100, func() { _ = WithTenant(parent, "acme") }); n > 1 {
		t.Fatalf("WithTenant allocates %v times, want 1", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = TenantFromContext(child) }); n != 0 {
		t.Fatalf("TenantFromContext allocates %v times, want 0", n)
	}
}
