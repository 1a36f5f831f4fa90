package tenantpg

import (
	"strings"
)

// template is a parsed name template such as "{user}.{tenant}". Literal text
// is kept as is; placeholders are {user}, {database} and {tenant}.
type template struct {
	src   string
	parts []tmplPart
}

type tmplPart struct {
	lit string
	ph  placeholder // phNone for a literal
}

type placeholder uint8

const (
	phNone placeholder = iota
	phUser
	phDatabase
	phTenant
)

var placeholders = map[string]placeholder{"user": phUser, "database": phDatabase, "tenant": phTenant}

// parseTemplate parses src. It fails for an unknown or unclosed placeholder
// and, when requireTenant is set, for a template without {tenant}: such a
// rewrite would send every tenant to the same place.
func parseTemplate(param, src string, requireTenant bool) (*template, error) {
	if src == "" {
		return nil, invalidConfig("%s: empty template", param)
	}
	if strings.IndexByte(src, 0) >= 0 {
		return nil, invalidConfig("%s %q: template contains a NUL byte", param, src)
	}
	t := &template{src: src}
	rest := src
	hasTenant := false
	for rest != "" {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: rest})
			break
		}
		if rest[i] == '}' {
			return nil, invalidConfig("%s %q: unexpected '}'", param, src)
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, invalidConfig("%s %q: unclosed '{'", param, src)
		}
		name := rest[i+1 : i+j]
		ph, ok := placeholders[name]
		if !ok {
			return nil, invalidConfig("%s %q: unknown placeholder {%s} (use {user}, {database} or {tenant})", param, src, name)
		}
		hasTenant = hasTenant || ph == phTenant
		t.parts = append(t.parts, tmplPart{ph: ph})
		rest = rest[i+j+1:]
	}
	if requireTenant && !hasTenant {
		return nil, invalidConfig("%s %q: template must contain {tenant}", param, src)
	}
	return t, nil
}

// expand substitutes the placeholders.
func (t *template) expand(user, database, tenant string) string {
	var b strings.Builder
	for _, p := range t.parts {
		switch p.ph {
		case phNone:
			b.WriteString(p.lit)
		case phUser:
			b.WriteString(user)
		case phDatabase:
			b.WriteString(database)
		case phTenant:
			b.WriteString(tenant)
		}
	}
	return b.String()
}

func (t *template) String() string {
	if t == nil {
		return ""
	}
	return t.src
}

// hasTenant reports whether the template uses {tenant}.
func (t *template) hasTenant() bool {
	for _, p := range t.parts {
		if p.ph == phTenant {
			return true
		}
	}
	return false
}

// schemaTemplate is a search_path template: a comma-separated list of schema
// name templates, at least one of which uses {tenant}.
type schemaTemplate struct {
	src   string
	elems []*template
}

func parseSchemaTemplate(param, src string) (*schemaTemplate, error) {
	st := &schemaTemplate{src: src}
	hasTenant := false
	for _, e := range strings.Split(src, ",") {
		t, err := parseTemplate(param, strings.TrimSpace(e), false)
		if err != nil {
			return nil, err
		}
		hasTenant = hasTenant || t.hasTenant()
		st.elems = append(st.elems, t)
	}
	if !hasTenant {
		return nil, invalidConfig("%s %q: template must contain {tenant}", param, src)
	}
	return st, nil
}

// expand returns the schema names.
func (st *schemaTemplate) expand(user, database, tenant string) []string {
	names := make([]string, len(st.elems))
	for i, e := range st.elems {
		names[i] = e.expand(user, database, tenant)
	}
	return names
}

// searchPath renders schema names as a search_path value with every name
// quoted, so that case and punctuation survive exactly.
func searchPath(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('"')
		b.WriteString(strings.ReplaceAll(n, `"`, `""`))
		b.WriteByte('"')
	}
	return b.String()
}
