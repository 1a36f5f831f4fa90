package tenantpg

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

type tenantKey struct{}

// tenantCtx carries a tenant id. It is context.WithValue specialised to
// one key: Value returns the *tenantCtx itself, so that neither WithTenant
// nor TenantFromContext boxes the id in an interface, and WithTenant costs
// one allocation instead of two (the tenant is often set per query).
type tenantCtx struct {
	context.Context
	id string
}

func (c *tenantCtx) Value(key any) any {
	if key == (tenantKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (c *tenantCtx) String() string {
	return fmt.Sprintf("%v.WithTenant(%q)", c.Context, c.id)
}

// WithTenant returns a copy of ctx that carries the tenant id. Every query,
// transaction, prepared statement and *sql.Conn started with the returned
// context runs on a connection of that tenant. The id is validated when it is
// used, not here: an invalid id makes those operations fail with
// ErrInvalidTenant. It panics if ctx is nil, as context.WithValue does.
func WithTenant(ctx context.Context, id string) context.Context {
	if ctx == nil {
		panic("tenantpg: WithTenant: nil parent context")
	}
	return &tenantCtx{Context: ctx, id: id}
}

// TenantFromContext returns the tenant id carried by ctx and whether there is
// one.
func TenantFromContext(ctx context.Context) (string, bool) {
	if ctx == nil {
		return "", false
	}
	if c, ok := ctx.Value(tenantKey{}).(*tenantCtx); ok {
		return c.id, true
	}
	return "", false
}

// DefaultPattern is the tenant id pattern used when tenant_pattern is not set:
// ASCII letters, digits, '_' and '-'. It has no '.', because Supavisor splits a
// login at its last dot.
const DefaultPattern = `[A-Za-z0-9_-]+`

// maxTenantLen bounds tenant ids whatever the pattern, so that a hostile id
// cannot make the pool map or the error messages arbitrarily large.
const maxTenantLen = 255

// compilePattern anchors p so that it must match the whole id.
func compilePattern(p string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + p + `)$`)
	if err != nil {
		return nil, invalidConfig("tenant_pattern %q: %v", p, err)
	}
	return re, nil
}

// validateTenant checks an id against the pattern and the rules that hold for
// every pattern.
func validateTenant(id string, re *regexp.Regexp) error {
	switch {
	case id == "":
		return invalidTenant(id, "empty id")
	case len(id) > maxTenantLen:
		return invalidTenant(id[:32]+"...", "id is %d bytes, at most %d allowed", len(id), maxTenantLen)
	case strings.IndexByte(id, 0) >= 0:
		return invalidTenant(id, "id contains a NUL byte")
	case !utf8.ValidString(id):
		return invalidTenant(id, "id is not valid UTF-8")
	case !re.MatchString(id):
		return invalidTenant(id, "id does not match pattern %s", re.String())
	}
	return nil
}
