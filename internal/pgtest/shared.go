package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultTenants returns the tenants provisioned by [Shared]: t01 … t10.
func DefaultTenants() []string {
	ts := make([]string, 10)
	for i := range ts {
		ts[i] = fmt.Sprintf("t%02d", i+1)
	}
	return ts
}

// sharedStartTimeout bounds starting the shared environment.
const sharedStartTimeout = 2 * time.Minute

// shared is the package-wide environment of Shared.
var shared struct {
	once        sync.Once
	mu          sync.Mutex
	env         *Env
	err         error
	unavailable string
}

// externalConfig returns TENANTPG_TEST_PG_URL and TENANTPG_TEST_PGBOUNCER_ADDR.
func externalConfig() (pgURL, bouncerAddr string) {
	return os.Getenv("TENANTPG_TEST_PG_URL"), os.Getenv("TENANTPG_TEST_PGBOUNCER_ADDR")
}

// missingPrerequisites returns why startFromEnv cannot run here, or "".
func missingPrerequisites() string {
	pgURL, bouncerAddr := externalConfig()
	switch {
	case pgURL == "":
		if err := Available(); err != nil {
			return err.Error()
		}
	case bouncerAddr == "":
		if _, err := findPgBouncer(); err != nil {
			return err.Error()
		}
		if _, err := lookupRunAs(); err != nil {
			return err.Error()
		}
	}
	return ""
}

// inCI reports whether the CI environment variable asks for hard failures:
// any value but "", "0", "false" and "no" does, so that a CI system that
// spells it differently fails closed rather than skipping the suite.
func inCI() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv("CI"))) {
	case "", "0", "false", "no":
		return false
	}
	return true
}

// unavailable skips the test, or fails it when CI=true.
func unavailable(tb testing.TB, msg string) {
	tb.Helper()
	if !strings.Contains(msg, installHint) {
		msg += "; " + installHint
	}
	if inCI() {
		tb.Fatalf("pgtest: integration servers unavailable (CI=true): %s", msg)
	}
	tb.Skipf("pgtest: integration servers unavailable: %s", msg)
}

// RequireBinaries skips tb (or fails it when CI=true) unless local
// PostgreSQL and PgBouncer binaries are available; use it before calling
// [Start] or [StartPostgres] directly.
func RequireBinaries(tb testing.TB) {
	tb.Helper()
	if err := Available(); err != nil {
		unavailable(tb, err.Error())
	}
}

// Shared returns the package-wide Env, started on first use (with
// [DefaultTenants] and PoolSize 20) and shared by all tests of the test
// binary. It honours TENANTPG_TEST_PG_URL and TENANTPG_TEST_PGBOUNCER_ADDR.
// It registers no cleanup: call [Main] from TestMain to close it. Tests must
// not stop or restart the shared servers; use [Start] for that.
//
// When the binaries are missing Shared skips the test, or fails it when the
// environment variable CI is "true".
func Shared(tb testing.TB) *Env {
	tb.Helper()
	shared.once.Do(func() {
		if msg := missingPrerequisites(); msg != "" {
			shared.unavailable = msg
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		defer cancel()
		env, err := startFromEnv(ctx, Options{Tenants: DefaultTenants(), PoolSize: 20})
		shared.mu.Lock()
		shared.env, shared.err = env, err
		shared.mu.Unlock()
	})
	if shared.unavailable != "" {
		unavailable(tb, shared.unavailable)
	}
	if shared.err != nil {
		tb.Fatalf("pgtest: starting the shared environment: %v", shared.err)
	}
	return shared.env
}

// Main runs the tests and then closes the environment started by [Shared],
// if any, and exits with the tests' code. Use it as
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	env := shared.env
	shared.mu.Unlock()
	if env != nil {
		if err := env.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: closing the shared environment: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}
