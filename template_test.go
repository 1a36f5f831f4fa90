package tenantpg

import (
	"errors"
	"testing"
)

func TestTemplateExpand(t *testing.T) {
	tests := []struct{ src, want string }{
		{"{user}.{tenant}", "app.acme"},
		{"{tenant}", "acme"},
		{"tenant_{tenant}_{database}", "tenant_acme_postgres"},
		{"{tenant}{tenant}", "acmeacme"},
	}
	for _, tc := range tests {
		tm, err := parseTemplate("p", tc.src, true)
		if err != nil {
			t.Fatalf("%q: %v", tc.src, err)
		}
		if got := tm.expand("app", "postgres", "acme"); got != tc.want {
			t.Errorf("%q expands to %q, want %q", tc.src, got, tc.want)
		}
	}
}

func TestTemplateErrors(t *testing.T) {
	for _, src := range []string{"", "{user}", "{tenant", "tenant}", "{x}{tenant}", "{}{tenant}"} {
		if _, err := parseTemplate("p", src, true); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("parseTemplate(%q) = %v, want ErrInvalidConfig", src, err)
		}
	}
}

func TestSchemaTemplate(t *testing.T) {
	st, err := parseSchemaTemplate("tenant_schema", "t_{tenant}, public")
	if err != nil {
		t.Fatal(err)
	}
	names := st.expand("app", "db", `Ac"me`)
	if got, want := searchPath(names), `"t_Ac""me", "public"`; got != want {
		t.Errorf("search_path = %s, want %s", got, want)
	}
	if _, err := parseSchemaTemplate("tenant_schema", "public, shared"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("schema without {tenant}: %v", err)
	}
}
