// Package integration runs tenantpg against a real PostgreSQL and a real
// PgBouncer started by internal/pgtest.
package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// tenants returns n tenant ids, provisioned on env.
func tenants(t *testing.T, env *pgtest.Env, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%02d", i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.Provision(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	return ids
}

// withParams appends tenant parameters to a URL.
func withParams(url string, params ...string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + strings.Join(params, "&")
}

// open opens dsn with sql.Open("tenantpg") and closes it after the test.
func open(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("tenantpg", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func stats(t *testing.T, db *sql.DB) tenantpg.Stats {
	t.Helper()
	st, err := tenantpg.DBStats(db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func queryString(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, q string, args ...any) (string, error) {
	var s string
	err := db.QueryRowContext(ctx, q, args...).Scan(&s)
	return s, err
}

func mustErrIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}
