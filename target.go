package tenantpg

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// maxIdentLen is PostgreSQL's NAMEDATALEN-1. Longer user and database names
// in the startup packet are truncated silently, so two tenants could share a
// login; tenantpg rejects them instead.
const maxIdentLen = 63

// identity is what a tenant's connections must report.
type identity struct {
	user, database string
	// poolerUser is the role a login of the form "<role>.<tenant>" maps to
	// behind Supavisor, which logs in upstream as <role>; "" otherwise.
	poolerUser   string
	searchPath   string // "" when not rewritten
	setting      string // setting name, "" when none
	settingValue string
}

// resolve builds the pool configuration of a tenant: templates first, then
// the user's ResolveFunc, then the name checks. Errors for bad ids match
// ErrInvalidTenant.
func (s *settings) resolve(ctx context.Context, tenant string) (*pgxpool.Config, identity, error) {
	if err := validateTenant(tenant, s.pattern); err != nil {
		return nil, identity{}, err
	}
	pc := s.cfg.Pool.Copy()
	cc := pc.ConnConfig
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if s.user != nil {
		cc.User = s.user.expand(s.baseUser, s.baseDB, tenant)
	}
	if s.db != nil {
		cc.Database = s.db.expand(s.baseUser, s.baseDB, tenant)
	}
	if s.schema != nil {
		names := s.schema.expand(s.baseUser, s.baseDB, tenant)
		for _, n := range names {
			if err := checkIdent(tenant, "schema", n); err != nil {
				return nil, identity{}, err
			}
		}
		cc.RuntimeParams["search_path"] = searchPath(names)
	}
	if s.cfg.Setting != "" {
		cc.RuntimeParams[s.cfg.Setting] = tenant
	}
	if s.cfg.Resolve != nil {
		if err := s.cfg.Resolve(ctx, tenant, pc); err != nil {
			return nil, identity{}, fmt.Errorf("tenantpg: resolve tenant %q: %w", tenant, err)
		}
		if pc.ConnConfig == nil {
			return nil, identity{}, fmt.Errorf("tenantpg: resolve tenant %q: ConnConfig set to nil", tenant)
		}
	}
	cc = pc.ConnConfig
	if err := checkIdent(tenant, "user", cc.User); err != nil {
		return nil, identity{}, err
	}
	if err := checkIdent(tenant, "database", cc.Database); err != nil {
		return nil, identity{}, err
	}
	id := identity{user: cc.User, database: cc.Database, searchPath: cc.RuntimeParams["search_path"]}
	if s.user != nil && strings.HasSuffix(s.user.src, ".{tenant}") && cc.User == s.user.expand(s.baseUser, s.baseDB, tenant) {
		id.poolerUser = strings.TrimSuffix(cc.User, "."+tenant)
	}
	if s.cfg.Setting != "" {
		id.setting, id.settingValue = s.cfg.Setting, cc.RuntimeParams[s.cfg.Setting]
	}
	return pc, id, nil
}

// checkIdent rejects names that PostgreSQL would truncate or cannot carry.
func checkIdent(tenant, what, name string) error {
	switch {
	case name == "":
		return invalidTenant(tenant, "rewritten %s is empty", what)
	case len(name) > maxIdentLen:
		return invalidTenant(tenant, "rewritten %s %q is %d bytes; PostgreSQL keeps only %d and would silently truncate it",
			what, name, len(name), maxIdentLen)
	case strings.IndexByte(name, 0) >= 0:
		return invalidTenant(tenant, "rewritten %s contains a NUL byte", what)
	}
	return nil
}

// targetKey identifies where a pool config connects and as whom. With
// Config.SharePools, tenants whose configs have the same key share one pool.
func targetKey(pc *pgxpool.Config) string {
	cc := pc.ConnConfig
	var b strings.Builder
	fmt.Fprintf(&b, "%q|%d|%q|%q|%q|%d|%d|%d|%d|%d|%d", cc.Host, cc.Port, cc.User, cc.Password, cc.Database,
		cc.DefaultQueryExecMode, pc.MaxConns, pc.MinConns, pc.MinIdleConns, cc.ConnectTimeout, pc.MaxConnLifetime)
	writeTLSKey(&b, cc.TLSConfig)
	for _, fb := range cc.Fallbacks {
		fmt.Fprintf(&b, "|fb:%q:%d", fb.Host, fb.Port)
		writeTLSKey(&b, fb.TLSConfig)
	}
	keys := make([]string, 0, len(cc.RuntimeParams))
	for k := range cc.RuntimeParams {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "|%q=%q", k, cc.RuntimeParams[k])
	}
	return b.String()
}

// writeTLSKey adds what distinguishes TLS configs that connect as different
// clients or trust different servers. Configs are cloned per tenant, so
// pointers to the shared parts (roots, certificates) stay comparable; a
// config that picks its client certificate in code is never shared.
func writeTLSKey(b *strings.Builder, t *tls.Config) {
	if t == nil {
		b.WriteString("|notls")
		return
	}
	fmt.Fprintf(b, "|tls:%q:%t:%p", t.ServerName, t.InsecureSkipVerify, t.RootCAs)
	if len(t.Certificates) > 0 {
		fmt.Fprintf(b, ":%p", &t.Certificates[0])
	}
	if t.GetClientCertificate != nil {
		fmt.Fprintf(b, ":unshared%p", t)
	}
}
