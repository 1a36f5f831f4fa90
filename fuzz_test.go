package tenantpg

// Fuzz tests for the hostile-input surface: DSN parsing, name templates and
// tenant validation. go test runs the seeds (f.Add and testdata/fuzz) as
// ordinary tests; make fuzz runs each fuzzer for a while.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
)

// FuzzSplitDSN checks what holds for any input: errors are
// ErrInvalidConfig, tenant_* parameters are all removed, and splitting the
// rest again removes nothing and changes nothing.
func FuzzSplitDSN(f *testing.F) {
	for _, s := range []string{
		"postgres://app:pw@h:6543/db?sslmode=disable&tenant_user=%7Buser%7D.%7Btenant%7D&pool_max_conns=3",
		"postgresql://h/db?tenant_database={tenant}",
		"postgres://h/db?tenant_user=a&tenant_user=b",
		"postgres://u:p?ss@h/db?tenant_schema={tenant}",
		"postgres://h/db?tenant_pattern=[a-z]%2B&tenant_schema={tenant}",
		"postgres://h/db?&&tenant_setting=app.tenant_id&",
		"host=h user=app tenant_schema='t_{tenant}, public' password='it\\'s'",
		`password='a\'b\\c' tenant_setting=app.tenant_id sslmode=disable`,
		"password=abc\\ tenant_user={user}.{tenant}",
		"tenant_user = '{user}.{tenant}'   dbname = x  ",
		"a b=c",
		"=x",
		"x='unterminated",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		rest, tenant, keys, err := splitDSN(dsn)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not match ErrInvalidConfig", err)
			}
			return
		}
		for k := range tenant {
			if !strings.HasPrefix(k, tenantParamPrefix) {
				t.Fatalf("tenant parameter %q without the prefix", k)
			}
		}
		for k := range keys {
			if strings.HasPrefix(k, tenantParamPrefix) {
				t.Fatalf("tenant parameter %q left for pgx", k)
			}
		}
		rest2, tenant2, keys2, err := splitDSN(rest)
		if err != nil {
			t.Fatalf("splitting the rest %q again: %v", rest, err)
		}
		if len(tenant2) != 0 {
			t.Fatalf("the rest %q still has tenant parameters %v", rest, tenant2)
		}
		if rest2 != rest {
			t.Fatalf("splitting is not idempotent: %q then %q", rest, rest2)
		}
		if !equalKeys(keys, keys2) {
			t.Fatalf("keys %v, then %v", keys, keys2)
		}
	})
}

func equalKeys(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// kvQuote quotes a keyword/value DSN value as libpq reads it.
func kvQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// FuzzSplitKeywordValue is differential: a tenant_* parameter added to a
// keyword/value DSN must come out with its exact value, and pgx must read
// the rest exactly as it reads the DSN without the parameter.
func FuzzSplitKeywordValue(f *testing.F) {
	for _, s := range [][2]string{
		{"host=h user=app password=secret dbname=app", "{user}.{tenant}"},
		{"host=h password='it\\'s a \\\\ test'", "t_{tenant}, public"},
		{"password=abc\\", "{tenant}"},
		{"password=abc\\  port=5433", "{tenant}"},
		{"host=h application_name=x\\ y", "a'b\\c"},
		{"  host = h   port = 5433 ", ""},
		{"host=h options='-c search_path=x'", "{tenant}"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, base, tval string) {
		if strings.Contains(base, tenantParamPrefix) || strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
			return
		}
		dsn := "tenant_user=" + kvQuote(tval) + " " + base
		rest, tenant, _, err := splitDSN(dsn)
		want, wantErr := pgconn.ParseConfig(base)
		if err != nil {
			if wantErr == nil {
				t.Fatalf("splitDSN(%q) = %v, but pgx accepts the DSN without the tenant parameter", dsn, err)
			}
			return
		}
		if tenant["tenant_user"] != tval {
			t.Fatalf("tenant_user = %q, want %q", tenant["tenant_user"], tval)
		}
		got, gotErr := pgconn.ParseConfig(rest)
		compareConfigs(t, base, rest, want, wantErr, got, gotErr)
	})
}

// FuzzSplitURL is FuzzSplitKeywordValue for URLs: tenant_* query parameters
// are percent-decoded as libpq decodes them ('+' stays '+'), and pgx reads
// the rest as it reads the URL without them.
func FuzzSplitURL(f *testing.F) {
	for _, s := range [][2]string{
		{"app:secret@h:6543/postgres?sslmode=disable", "{user}.{tenant}"},
		{"h/db", "[a-z0-9]+"},
		{"u:p?ss@h/db?application_name=x", "{tenant}"},
		{"u:p%3Fss@h/db", "a&b=c"},
		{"h/db?application_name=a+b", "x+y"},
		{"h/db#frag", "{tenant}"},
		{"[::1]:5432/db?sslmode=disable&application_name=%41", "é"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, tail, tval string) {
		if strings.Contains(tail, tenantParamPrefix) {
			return
		}
		base := "postgres://" + tail
		// Like libpq, the query starts at the first '?' after the user
		// info, which ends at a '@' seen before any '/'.
		sep := "?"
		info := tail
		if i := strings.IndexAny(tail, "@/"); i >= 0 && tail[i] == '@' {
			info = tail[i+1:]
		}
		if strings.Contains(info, "?") {
			sep = "&"
		}
		// Percent-encode every byte that could be structure.
		enc := url.PathEscape(tval)
		enc = strings.NewReplacer("&", "%26", "=", "%3D", "+", "%2B", "?", "%3F", "#", "%23", "@", "%40").Replace(enc)
		dsn := base + sep + "tenant_user=" + enc
		want, wantErr := pgconn.ParseConfig(base)
		rest, tenant, _, err := splitDSN(dsn)
		if strings.IndexByte(tval, 0) >= 0 {
			if err == nil || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("splitDSN(%q) = %v, want %%00 refused as pgx refuses it", dsn, err)
			}
			return
		}
		if err != nil {
			if wantErr == nil {
				t.Fatalf("splitDSN(%q) = %v, but pgx accepts the URL without the tenant parameter", dsn, err)
			}
			return
		}
		if wantErr != nil {
			return // pgx rejects the base URL; nothing to compare
		}
		if tenant["tenant_user"] != tval {
			t.Fatalf("splitDSN(%q): tenant_user = %q, want %q", dsn, tenant["tenant_user"], tval)
		}
		got, gotErr := pgconn.ParseConfig(rest)
		compareConfigs(t, base, rest, want, wantErr, got, gotErr)

		// The way people write it: only what must be escaped is, so a '+'
		// or a '?' stays literal, as libpq reads it.
		if strings.IndexByte(tval, 0) < 0 {
			raw := strings.NewReplacer("%", "%25", "&", "%26", "=", "%3D", "@", "%40").Replace(tval)
			if _, tenant, _, err := splitDSN(base + sep + "tenant_user=" + raw); err != nil || tenant["tenant_user"] != tval {
				t.Fatalf("splitDSN(%q): tenant_user = %q (%v), want %q", base+sep+"tenant_user="+raw, tenant["tenant_user"], err, tval)
			}
		}
	})
}

// FuzzSplitURLUserinfo puts the tenant parameter first in the query of a
// URL whose user info may hold '?', '&' or '=': the query starts after the
// user info, as libpq reads it.
func FuzzSplitURLUserinfo(f *testing.F) {
	for _, s := range []string{"app:secret", "u:p?ss", "u?:p&ss=x", "u:p%3Fss", "u:", ":p?"} {
		f.Add(s, "{user}.{tenant}")
	}
	f.Fuzz(func(t *testing.T, userinfo, tval string) {
		if strings.ContainsAny(userinfo, "@/") || strings.Contains(userinfo, tenantParamPrefix) {
			return
		}
		base := "postgres://" + userinfo + "@h/db?sslmode=disable"
		want, wantErr := pgconn.ParseConfig(base)
		if wantErr != nil {
			return
		}
		tval = strings.ReplaceAll(tval, "\x00", "")
		enc := strings.NewReplacer("%", "%25", "&", "%26", "=", "%3D", "@", "%40").Replace(tval)
		dsn := "postgres://" + userinfo + "@h/db?tenant_user=" + enc + "&sslmode=disable"
		rest, tenant, _, err := splitDSN(dsn)
		if err != nil {
			t.Fatalf("splitDSN(%q) = %v, but pgx accepts %q", dsn, err, base)
		}
		if tenant["tenant_user"] != tval {
			t.Fatalf("splitDSN(%q): tenant_user = %q, want %q", dsn, tenant["tenant_user"], tval)
		}
		got, gotErr := pgconn.ParseConfig(rest)
		compareConfigs(t, base, rest, want, wantErr, got, gotErr)
	})
}

// compareConfigs fails unless pgx read base and rest the same way.
func compareConfigs(t *testing.T, base, rest string, want *pgconn.Config, wantErr error, got *pgconn.Config, gotErr error) {
	t.Helper()
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("pgx reads %q as (%v) but the rest %q as (%v)", base, wantErr, rest, gotErr)
	}
	if wantErr != nil {
		return
	}
	type view struct {
		Host, User, Password, Database string
		Port                           uint16
		Params                         map[string]string
		Fallbacks                      []string
	}
	v := func(c *pgconn.Config) view {
		out := view{Host: c.Host, User: c.User, Password: c.Password, Database: c.Database, Port: c.Port, Params: c.RuntimeParams}
		for _, fb := range c.Fallbacks {
			out.Fallbacks = append(out.Fallbacks, fmt.Sprintf("%s:%d:%t", fb.Host, fb.Port, fb.TLSConfig != nil))
		}
		return out
	}
	a, b := v(want), v(got)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("pgx reads %q as %+v but the rest %q as %+v", base, a, rest, b)
	}
}

// FuzzParseConfig feeds whole DSNs to ParseConfig: no panic, errors match
// ErrInvalidConfig, and an accepted configuration resolves a tenant or
// refuses it with ErrInvalidTenant.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}",
		"postgres://app:pw@127.0.0.1:1/app?tenant_database=db_{tenant}&tenant_max_conns=8&pool_max_conns=2",
		"postgres://app:pw@127.0.0.1:1/app?tenant_schema=t_{tenant},public&tenant_setting=app.tenant_id&tenant_verify=user,schema",
		"postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}&tenant_pattern=[a-z0-9]%2B&tenant_reject_ttl=0&tenant_pool_idle=1s",
		"postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}&tenant_pattern=[a-z0-9]+",
		"postgres://app:pw@127.0.0.1:1/app?tenant_user=%7Buser%7D%00.%7Btenant%7D",
		"host=127.0.0.1 port=1 user=app tenant_database='{tenant}' tenant_ping=t01",
		"host=127.0.0.1 tenant_user={user}.{tenant} default_query_exec_mode=describe_exec",
		"host=127.0.0.1 tenant_user={nope}",
		"host=127.0.0.1 tenant_max_conns=-1 tenant_user={tenant}",
		"host=127.0.0.1 tenant_bogus=1",
	} {
		f.Add(s, "acme")
	}
	f.Fuzz(func(t *testing.T, dsn, tenant string) {
		cfg, err := ParseConfig(dsn)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParseConfig(%q) = %v, want ErrInvalidConfig", dsn, err)
			}
			return
		}
		s, err := compile(cfg)
		if err != nil {
			t.Fatalf("ParseConfig accepted %q but compile rejects it: %v", dsn, err)
		}
		pc, id, err := s.resolve(context.Background(), tenant)
		if err != nil {
			if !errors.Is(err, ErrInvalidTenant) {
				t.Fatalf("resolve(%q) = %v, want ErrInvalidTenant", tenant, err)
			}
			return
		}
		cc := pc.ConnConfig
		for what, name := range map[string]string{"user": cc.User, "database": cc.Database} {
			if name == "" || len(name) > maxIdentLen || strings.IndexByte(name, 0) >= 0 {
				t.Fatalf("tenant %q resolved to %s %q", tenant, what, name)
			}
		}
		for k, v := range cc.RuntimeParams {
			if strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
				t.Fatalf("tenant %q resolved to startup parameter %q=%q with a NUL byte", tenant, k, v)
			}
		}
		if id.user != cc.User || id.database != cc.Database {
			t.Fatalf("identity %+v does not match the target %s/%s", id, cc.User, cc.Database)
		}
	})
}

var placeholderRE = regexp.MustCompile(`\{(user|database|tenant)\}`)

// FuzzTemplate checks template parsing and expansion against a regular
// expression, and that expansion tells tenants apart.
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"{user}.{tenant}", "{tenant}", "tenant_{tenant}_{database}", "{tenant}{tenant}",
		"{user}", "{tenant", "tenant}", "{x}{tenant}", "{}{tenant}", "{{tenant}}", "a{tenant}b{user}c", "é{tenant}\x00"} {
		f.Add(s, "app", "postgres", "acme", "globex")
	}
	f.Fuzz(func(t *testing.T, src, user, db, t1, t2 string) {
		for _, require := range []bool{false, true} {
			tm, err := parseTemplate("p", src, require)
			if err != nil {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("parseTemplate(%q) = %v", src, err)
				}
				continue
			}
			if tm.String() != src {
				t.Fatalf("String() = %q, want %q", tm.String(), src)
			}
			if strings.IndexByte(src, 0) >= 0 {
				t.Fatalf("template %q with a NUL byte accepted", src)
			}
			if stray := placeholderRE.ReplaceAllString(src, ""); strings.ContainsAny(stray, "{}") {
				t.Fatalf("template %q with a stray brace accepted", src)
			}
			want := placeholderRE.ReplaceAllStringFunc(src, func(m string) string {
				return map[string]string{"{user}": user, "{database}": db, "{tenant}": t1}[m]
			})
			if got := tm.expand(user, db, t1); got != want {
				t.Fatalf("%q expands to %q, want %q", src, got, want)
			}
			if require && !tm.hasTenant() {
				t.Fatalf("%q accepted without {tenant}", src)
			}
			if tm.hasTenant() && t1 != t2 && tm.expand(user, db, t1) == tm.expand(user, db, t2) {
				t.Fatalf("%q expands tenants %q and %q to the same name", src, t1, t2)
			}
		}
	})
}

// unquoteSearchPath reads back a search_path of quoted names, as PostgreSQL
// would.
func unquoteSearchPath(s string) ([]string, error) {
	var names []string
	for s != "" {
		if !strings.HasPrefix(s, `"`) {
			return nil, fmt.Errorf("unquoted name at %q", s)
		}
		s = s[1:]
		var b strings.Builder
		for {
			i := strings.IndexByte(s, '"')
			if i < 0 {
				return nil, errors.New("unterminated quoted name")
			}
			b.WriteString(s[:i])
			s = s[i+1:]
			if strings.HasPrefix(s, `"`) {
				b.WriteByte('"')
				s = s[1:]
				continue
			}
			break
		}
		names = append(names, b.String())
		if s == "" {
			break
		}
		if !strings.HasPrefix(s, ", ") {
			return nil, fmt.Errorf("missing separator at %q", s)
		}
		s = s[2:]
	}
	return names, nil
}

// FuzzSchemaTemplate checks that the search_path tenantpg renders reads
// back as exactly the expanded schema names, whatever they contain.
func FuzzSchemaTemplate(f *testing.F) {
	for _, s := range []string{"{tenant}", "t_{tenant}, public", `{tenant}","public`, "{user}_{tenant},{database}", " , {tenant}", "public"} {
		f.Add(s, `Ac"me`)
	}
	f.Fuzz(func(t *testing.T, src, tenant string) {
		st, err := parseSchemaTemplate("tenant_schema", src)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("parseSchemaTemplate(%q) = %v", src, err)
			}
			return
		}
		names := st.expand("app", "db", tenant)
		back, err := unquoteSearchPath(searchPath(names))
		if err != nil {
			t.Fatalf("search_path %q: %v", searchPath(names), err)
		}
		if !slices.Equal(back, names) {
			t.Fatalf("search_path %q reads back as %q, want %q", searchPath(names), back, names)
		}
	})
}

// FuzzValidateTenant checks the rules that hold for every pattern, and
// that the default pattern admits nothing but ASCII letters, digits, '_'
// and '-'.
func FuzzValidateTenant(f *testing.F) {
	for _, s := range hostileTenantIDs() {
		f.Add(s)
	}
	def, err := compilePattern(DefaultPattern)
	if err != nil {
		f.Fatal(err)
	}
	anything, err := compilePattern(`(?s).*`)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if err := validateTenant(id, anything); err == nil {
			if id == "" || len(id) > maxTenantLen || strings.IndexByte(id, 0) >= 0 || !utf8.ValidString(id) {
				t.Fatalf("%q accepted by the permissive pattern", id)
			}
		} else if !errors.Is(err, ErrInvalidTenant) {
			t.Fatalf("validateTenant(%q) = %v", id, err)
		}
		if err := validateTenant(id, def); err == nil {
			if len(id) == 0 || len(id) > maxTenantLen {
				t.Fatalf("%q of %d bytes accepted", id, len(id))
			}
			for i := 0; i < len(id); i++ {
				c := id[i]
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
					t.Fatalf("%q accepted by the default pattern with byte %q", id, c)
				}
			}
		} else if !errors.Is(err, ErrInvalidTenant) {
			t.Fatalf("validateTenant(%q) = %v", id, err)
		}
	})
}

// hostileTenantIDs are tenant ids built to inject, to look like another
// tenant, or to collide after PostgreSQL's 63-byte truncation.
func hostileTenantIDs() []string {
	long := strings.Repeat("a", 59)
	return []string{
		"acme", "t01",
		`a'b`, `a"b`, `'; drop table docs; --`, `"; drop role app; --`, `a;b`, "a b", "a\tb", "a\nb", "a\rb",
		"a\x00b", "\x00", "t01\x00", "a.b", ".", "..", "t01.", ".t01", `a\b`, "a/b", "a=b", "a&b", "a%00b",
		"a?b", "a#b", "{tenant}", "{user}", "$1", "a,b", "a)b", "a*b", "%", "-", "_", "--",
		"аcme",         // Cyrillic а
		"t\uff101",     // fullwidth 0
		"\uff5401",     // fullwidth t
		"t01\u200b",    // zero-width space
		"t\u200d01",    // zero-width joiner
		"\ufefft01",    // byte order mark
		"t01\u202e",    // right-to-left override
		"é", "e\u0301", // precomposed and combining
		"ß", "ı", "ℌ", "Ⅰ", "t\U0001d7ce1",
		"\xff", "\xc0\xaf", "\xed\xa0\x80", // invalid UTF-8, overlong '/', surrogate
		long + "x", long + "y", // app.<id> is 64 bytes: would be truncated to the same 63
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 255), strings.Repeat("a", 256),
		strings.Repeat("a", 100000),
	}
}

// FuzzResolve resolves two tenants with every rewrite at once, from a
// permissive pattern: whatever the ids, accepted names fit PostgreSQL's
// 63 bytes, carry no NUL, and two different tenants never share a login,
// a database, a search_path, a setting value or a pool.
func FuzzResolve(f *testing.F) {
	ids := hostileTenantIDs()
	for i := range ids {
		f.Add(ids[i], ids[(i+1)%len(ids)])
	}
	f.Add(strings.Repeat("a", 59)+"x", strings.Repeat("a", 59)+"y")
	cfgs := map[string]string{
		"default":    "postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}&tenant_database=db_{tenant}&tenant_schema=s_{tenant},public&tenant_setting=app.tenant_id",
		"permissive": "postgres://app:pw@127.0.0.1:1/app?tenant_user={user}.{tenant}&tenant_database=db_{tenant}&tenant_schema=s_{tenant},public&tenant_setting=app.tenant_id&tenant_pattern=(?s).%2B",
	}
	settings := map[string]*settings{}
	for name, dsn := range cfgs {
		cfg, err := ParseConfig(dsn)
		if err != nil {
			f.Fatal(err)
		}
		if settings[name], err = compile(cfg); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, t1, t2 string) {
		for name, s := range settings {
			pc1, id1, err1 := s.resolve(context.Background(), t1)
			pc2, id2, err2 := s.resolve(context.Background(), t2)
			for _, e := range []error{err1, err2} {
				if e != nil && !errors.Is(e, ErrInvalidTenant) {
					t.Fatalf("%s: %v", name, e)
				}
			}
			for i, r := range []struct {
				id  identity
				err error
			}{{id1, err1}, {id2, err2}} {
				if r.err != nil {
					continue
				}
				for _, n := range []string{r.id.user, r.id.database} {
					if len(n) > maxIdentLen || strings.IndexByte(n, 0) >= 0 || !utf8.ValidString(n) {
						t.Fatalf("%s: tenant %d resolved to name %q", name, i+1, n)
					}
				}
			}
			if err1 != nil || err2 != nil || t1 == t2 {
				continue
			}
			switch {
			case id1.user == id2.user:
				t.Fatalf("%s: tenants %q and %q share the login %q", name, t1, t2, id1.user)
			case id1.database == id2.database:
				t.Fatalf("%s: tenants %q and %q share the database %q", name, t1, t2, id1.database)
			case id1.searchPath == id2.searchPath:
				t.Fatalf("%s: tenants %q and %q share the search_path %q", name, t1, t2, id1.searchPath)
			case id1.settingValue == id2.settingValue:
				t.Fatalf("%s: tenants %q and %q share the setting %q", name, t1, t2, id1.settingValue)
			case targetKey(pc1) == targetKey(pc2):
				t.Fatalf("%s: tenants %q and %q share a pool", name, t1, t2)
			}
		}
	})
}
