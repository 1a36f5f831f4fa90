package tenantpg

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoTenant is returned when an operation that needs a tenant runs with a
// context that carries none (see WithTenant). No connection is opened.
var ErrNoTenant = errors.New("tenantpg: context carries no tenant (use tenantpg.WithTenant)")

// ErrInvalidTenant is returned, before any network I/O, for a tenant id that
// does not match the configured pattern or whose rewritten names would not fit
// PostgreSQL's 63-byte identifier limit.
var ErrInvalidTenant = errors.New("tenantpg: invalid tenant")

// ErrInvalidConfig is returned by ParseConfig, NewConnector, OpenDB and
// sql.Open for a DSN or Config that tenantpg cannot use.
var ErrInvalidConfig = errors.New("tenantpg: invalid configuration")

// ErrBudgetExhausted is matched (errors.Is) by a *BudgetError: the global
// connection budget (tenant_max_conns) stayed full until the caller's context
// ended.
var ErrBudgetExhausted = errors.New("tenantpg: connection budget exhausted")

// ErrTenantRejected is matched (errors.Is) by a *RejectedError: the pooler or
// server refused the tenant's login, user or database.
var ErrTenantRejected = errors.New("tenantpg: tenant rejected by server")

// ErrIdentityMismatch is matched (errors.Is) by an *IdentityError: a new
// connection reached a session whose user, database, search_path or setting is
// not the tenant's target.
var ErrIdentityMismatch = errors.New("tenantpg: connection identity does not match tenant")

// ErrSessionTenant is returned by an operation of a checkout that was
// opened without a tenant and bound to one by its first operation (see
// Conn) when the operation's context names another tenant: which tenant
// such a session belongs to is decided by its first use, so it refuses to
// run anyone else's statements rather than run them on that tenant's
// connection.
var ErrSessionTenant = errors.New("tenantpg: session is bound to another tenant")

// ErrClosed is returned by a closed Connector's Connect, Pool and Forget
// (wrapped, by a connect that Close cut short), and by operations of a
// checkout (a *sql.Conn, Conn.ConnContext) that outlived its Connector. database/sql's own methods on a closed *sql.DB return
// database/sql's "sql: database is closed" before reaching tenantpg.
var ErrClosed = errors.New("tenantpg: connector is closed")

// ErrNotTenantpg is returned by DBStats, ConnectorOf and Pool for a *sql.DB
// that was not opened with the tenantpg driver.
var ErrNotTenantpg = errors.New("tenantpg: *sql.DB does not use the tenantpg driver")

// BudgetError reports that no physical connection could be opened for Tenant
// because all Limit connections of the global budget stayed in use until the
// caller's context ended. It matches ErrBudgetExhausted and unwraps to the
// context's error.
type BudgetError struct {
	Tenant string
	Limit  int
	Waited time.Duration
	Err    error // the context error that ended the wait
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("tenantpg: connection budget exhausted for tenant %q: %d connections in use, waited %s: %v",
		e.Tenant, e.Limit, e.Waited.Round(time.Microsecond), e.Err)
}

// Is reports whether target is ErrBudgetExhausted.
func (e *BudgetError) Is(target error) bool { return target == ErrBudgetExhausted }

// Unwrap returns the context error that ended the wait.
func (e *BudgetError) Unwrap() error { return e.Err }

// RejectedError reports that the pooler or server rejected Tenant: an unknown
// Supavisor tenant, a PgBouncer alias that does not exist, or a PostgreSQL
// database or role that does not exist or may not log in. It matches
// ErrTenantRejected and unwraps to the server's error, so errors.As with a
// *pgconn.PgError still yields the SQLSTATE. Cached is true when the error was
// served from the negative cache without dialing.
type RejectedError struct {
	Tenant string
	Cached bool
	Until  time.Time // requests for Tenant fail fast until then
	Err    error     // wraps the *pgconn.PgError
}

func (e *RejectedError) Error() string {
	s := fmt.Sprintf("tenantpg: tenant %q rejected by server", e.Tenant)
	if e.Cached {
		s += " (cached)"
	}
	return s + ": " + e.Err.Error()
}

// Is reports whether target is ErrTenantRejected.
func (e *RejectedError) Is(target error) bool { return target == ErrTenantRejected }

// Unwrap returns the server's error.
func (e *RejectedError) Unwrap() error { return e.Err }

// PgError returns the server's *pgconn.PgError, or nil.
func (e *RejectedError) PgError() *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(e.Err, &pe) {
		return pe
	}
	return nil
}

// IdentityError reports that a new connection for Tenant has Field ("user",
// "database", "search_path" or a setting name) equal to Got where the tenant's
// target says Want. The connection is closed and never used. It matches
// ErrIdentityMismatch.
type IdentityError struct {
	Tenant string
	Field  string
	Got    string
	Want   string
}

func (e *IdentityError) Error() string {
	s := fmt.Sprintf("tenantpg: identity check failed for tenant %q: server reports %s %q, want %q",
		e.Tenant, e.Field, e.Got, e.Want)
	if e.Field == "user" {
		s += " (if a pooler maps the login to another role, set tenant_verify to the checks that hold, e.g. database, or off)"
	}
	return s
}

// Is reports whether target is ErrIdentityMismatch.
func (e *IdentityError) Is(target error) bool { return target == ErrIdentityMismatch }

// invalidTenant builds an error that matches ErrInvalidTenant.
func invalidTenant(tenant, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrInvalidTenant, tenant, fmt.Sprintf(format, args...))
}

// invalidConfig builds an error that matches ErrInvalidConfig.
func invalidConfig(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}
