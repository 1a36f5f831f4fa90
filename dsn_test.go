package tenantpg

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestSplitDSN(t *testing.T) {
	tests := []struct {
		name, dsn, rest string
		tenant          map[string]string
		keys            []string
	}{
		{
			name:   "url",
			dsn:    "postgres://app:pw@localhost:6543/postgres?sslmode=disable&tenant_user=%7Buser%7D.%7Btenant%7D&pool_max_conns=3",
			rest:   "postgres://app:pw@localhost:6543/postgres?sslmode=disable&pool_max_conns=3",
			tenant: map[string]string{"tenant_user": "{user}.{tenant}"},
			keys:   []string{"sslmode", "pool_max_conns"},
		},
		{
			name:   "url only tenant params",
			dsn:    "postgresql://h/db?tenant_database={tenant}",
			rest:   "postgresql://h/db",
			tenant: map[string]string{"tenant_database": "{tenant}"},
		},
		{
			name:   "url without query",
			dsn:    "postgres://h/db",
			rest:   "postgres://h/db",
			tenant: map[string]string{},
		},
		{
			name:   "keyword value",
			dsn:    "host=localhost  user=app tenant_schema='t_{tenant}, public' password='it\\'s' dbname = app",
			tenant: map[string]string{"tenant_schema": "t_{tenant}, public"},
			keys:   []string{"host", "user", "password", "dbname"},
		},
		{
			name:   "keyword value escapes",
			dsn:    `password='a\'b\\c' tenant_setting=app.tenant_id sslmode=disable`,
			rest:   `password='a\'b\\c' sslmode='disable'`,
			tenant: map[string]string{"tenant_setting": "app.tenant_id"},
			keys:   []string{"password", "sslmode"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rest, tenant, keys, err := splitDSN(tc.dsn)
			if err != nil {
				t.Fatal(err)
			}
			if tc.rest != "" && rest != tc.rest {
				t.Errorf("rest = %q, want %q", rest, tc.rest)
			}
			if strings.Contains(rest, "tenant_") {
				t.Errorf("rest %q still has tenant_ parameters", rest)
			}
			if len(tenant) != len(tc.tenant) {
				t.Errorf("tenant = %v, want %v", tenant, tc.tenant)
			}
			for k, v := range tc.tenant {
				if tenant[k] != v {
					t.Errorf("tenant[%s] = %q, want %q", k, tenant[k], v)
				}
			}
			for _, k := range tc.keys {
				if !keys[k] {
					t.Errorf("key %s not reported in %v", k, keys)
				}
			}
		})
	}
}

func TestSplitDSNKeywordValueRoundTrip(t *testing.T) {
	// The rest must parse to the same settings as the original.
	dsn := `host=db.example user=app password='p w\'x' dbname=app tenant_user={user}.{tenant} application_name=x`
	rest, _, _, err := splitDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(rest)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "db.example" || cfg.User != "app" || cfg.Password != `p w'x` || cfg.Database != "app" ||
		cfg.RuntimeParams["application_name"] != "x" {
		t.Fatalf("parsed %+v from %q", cfg.Config, rest)
	}
	if _, ok := cfg.RuntimeParams["tenant_user"]; ok {
		t.Fatal("tenant_user leaked into runtime params")
	}
}

func TestSplitDSNErrors(t *testing.T) {
	for _, dsn := range []string{
		"host=x tenant_user='{user}.{tenant}", // unterminated quote
		"host",                                // no '='
		"postgres://h/db?tenant_user=a&tenant_user=b",
		"host=x tenant_user={tenant} tenant_user={tenant}",
		"postgres://h/db?tenant_user=%zz",
	} {
		if _, _, _, err := splitDSN(dsn); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("splitDSN(%q) error = %v, want ErrInvalidConfig", dsn, err)
		}
	}
}

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig("postgres://app:pw@127.0.0.1:6432/app?tenant_user={user}.{tenant}&tenant_max_conns=8&tenant_pool_idle=90s&tenant_reject_ttl=2s&tenant_verify=database")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "{user}.{tenant}" || cfg.MaxConns != 8 || cfg.PoolIdle != 90*time.Second || cfg.RejectTTL != 2*time.Second || cfg.Verify != "database" {
		t.Fatalf("cfg = %+v", cfg)
	}
	if m := cfg.Pool.ConnConfig.DefaultQueryExecMode; m != pgx.QueryExecModeExec {
		t.Errorf("pooler route exec mode = %v, want exec", m)
	}
	if cfg.Pool.MaxConns != DefaultTenantMaxConns {
		t.Errorf("per-tenant MaxConns = %d, want %d", cfg.Pool.MaxConns, DefaultTenantMaxConns)
	}
	if _, ok := cfg.Pool.ConnConfig.RuntimeParams["tenant_user"]; ok {
		t.Error("tenant_user reached pgx as a startup parameter")
	}

	// An explicit exec mode wins; a direct route keeps pgx's default.
	cfg, err = ParseConfig("postgres://h/db?tenant_database={tenant}&default_query_exec_mode=cache_describe")
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Pool.ConnConfig.DefaultQueryExecMode; m != pgx.QueryExecModeCacheDescribe {
		t.Errorf("explicit exec mode = %v, want cache_describe", m)
	}
	cfg, err = ParseConfig("postgres://h/db?tenant_schema={tenant}")
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Pool.ConnConfig.DefaultQueryExecMode; m != pgx.QueryExecModeCacheStatement {
		t.Errorf("direct route exec mode = %v, want pgx default cache_statement", m)
	}

	// A small budget caps the default per-tenant size.
	cfg, err = ParseConfig("postgres://h/db?tenant_schema={tenant}&tenant_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pool.MaxConns != 2 {
		t.Errorf("MaxConns = %d, want 2", cfg.Pool.MaxConns)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := map[string]string{
		"no rewrite":         "postgres://h/db",
		"unknown param":      "postgres://h/db?tenant_usr={user}.{tenant}",
		"no tenant":          "postgres://h/db?tenant_user={user}",
		"bad placeholder":    "postgres://h/db?tenant_user={usr}.{tenant}",
		"unclosed":           "postgres://h/db?tenant_user={tenant",
		"bad max":            "postgres://h/db?tenant_user={tenant}&tenant_max_conns=-1",
		"bad idle":           "postgres://h/db?tenant_user={tenant}&tenant_pool_idle=soon",
		"bad pattern":        "postgres://h/db?tenant_user={tenant}&tenant_pattern=(",
		"bad setting":        "postgres://h/db?tenant_setting=drop table",
		"built-in setting":   "postgres://h/db?tenant_setting=role",
		"bad verify":         "postgres://h/db?tenant_user={tenant}&tenant_verify=maybe",
		"pool over budget":   "postgres://h/db?tenant_user={tenant}&tenant_max_conns=2&pool_max_conns=3",
		"min conns + budget": "postgres://h/db?tenant_user={tenant}&tenant_max_conns=2&pool_min_conns=1",
		"describe_exec":      "postgres://h/db?tenant_database={tenant}&default_query_exec_mode=describe_exec",
		"bad ping tenant":    "postgres://h/db?tenant_user={tenant}&tenant_ping=a.b",
		"pgx error":          "postgres://h/db?tenant_user={tenant}&pool_max_conns=x",
	}
	for name, dsn := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig(dsn)
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParseConfig(%q) = %v, want ErrInvalidConfig", dsn, err)
			}
		})
	}
	_, err := ParseConfig("postgres://h/db")
	if err == nil || !strings.Contains(err.Error(), "tenant_user") {
		t.Errorf("no-rewrite error %q should say what to add", err)
	}
}
