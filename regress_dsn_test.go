package tenantpg

import (
	"errors"
	"testing"
)

// Regressions found by the fuzz tests (fuzz_test.go): the DSN's tenant_*
// parameters must be read as libpq and pgx read the rest of the DSN.
func TestRegressDSNLikeLibpq(t *testing.T) {
	// '+' in a URL query is a '+', not a space: the documented default
	// pattern, copied into a URL, used to become "[A-Za-z0-9_-] " and
	// refuse every tenant.
	cfg, err := ParseConfig("postgres://app:pw@h/app?tenant_user={user}.{tenant}&tenant_pattern=[A-Za-z0-9_-]+")
	if err != nil || cfg.Pattern != DefaultPattern {
		t.Fatalf("tenant_pattern read as %q (%v), want %q", cfg.Pattern, err, DefaultPattern)
	}
	// A '?' in the user info does not start the query.
	cfg, err = ParseConfig("postgres://app:p?ss@h/app?tenant_user={user}.{tenant}")
	if err != nil || cfg.User != "{user}.{tenant}" || cfg.Pool.ConnConfig.Password != "p?ss" {
		t.Fatalf("password with '?': user template %q, password %q, %v", cfg.User, cfg.Pool.ConnConfig.Password, err)
	}
	// A trailing backslash ends a keyword/value value and is dropped.
	cfg, err = ParseConfig(`tenant_user={user}.{tenant} host=h password=abc\`)
	if err != nil || cfg.Pool.ConnConfig.Password != "abc" {
		t.Fatalf("trailing backslash: password %q, %v", cfg.Pool.ConnConfig.Password, err)
	}
	// A NUL byte is a configuration error, not an ErrInvalidTenant for
	// every tenant later.
	for _, dsn := range []string{
		"postgres://app:pw@h/app?tenant_user=%7Buser%7D%00.%7Btenant%7D",
		"host=h tenant_schema='{tenant}\x00'",
	} {
		if _, err := ParseConfig(dsn); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseConfig(%q) = %v, want ErrInvalidConfig", dsn, err)
		}
	}
}
