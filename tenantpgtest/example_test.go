package tenantpgtest_test

import (
	"database/sql"
	"os"
	"testing"

	"github.com/tenantpg/tenantpg/tenantpgtest"
)

// A test in your own suite, run in CI against a database that has these
// tenants: each tenant logs in as app.<tenant> through a Supavisor-style
// pooler, so current_user tells them apart.
func ExampleAssertIsolation() {
	TestTenantIsolation := func(t *testing.T) {
		db, err := sql.Open("tenantpg", os.Getenv("DATABASE_URL")+"?tenant_user={user}.{tenant}")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rep := tenantpgtest.AssertIsolation(t, db, []string{"acme", "globex", "initech"}, tenantpgtest.Config{
			Probe: "select current_user",
			Want:  func(tenant string) string { return "app." + tenant },
		})
		t.Log(rep) // 3 tenants, 7 paths, 3 rounds: 55 operations
	}
	_ = TestTenantIsolation
}

// Row-level security: the probe asks whose rows the session sees, and the
// identities are learned from a first probe per tenant (Want is nil): no two
// tenants may share one, and every later answer must equal it.
func ExampleCheck() {
	TestRLSIsolation := func(t *testing.T) {
		db, err := sql.Open("tenantpg", os.Getenv("DATABASE_URL")+"?tenant_setting=app.tenant_id")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rep, err := tenantpgtest.Check(t.Context(), db, []string{"acme", "globex"}, tenantpgtest.Config{
			Probe:   "select coalesce(string_agg(distinct tenant_id, ','), '') from documents",
			Workers: 16,
			Rounds:  10,
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range rep.Mismatches {
			t.Errorf("isolation broken: %s", m)
		}
	}
	_ = TestRLSIsolation
}
