package tenantpg

import (
	"context"
	"database/sql/driver"
	"fmt"
)

// noTenantConn is what Connect returns for a context without a tenant. It
// holds no server connection. Ping succeeds while the connector is open (or
// pings tenant_ping's pool when configured); everything else fails with
// ErrNoTenant. database/sql may keep it idle; ResetSession refuses to hand it
// to a caller that has a tenant. Only database/sql's background opener, which
// runs when SetMaxOpenConns is set and callers queue, skips ResetSession: such
// a caller then gets ErrNoTenant from every operation, Ping included. That is
// why tenantpg's limits replace SetMaxOpenConns.
type noTenantConn struct {
	c *Connector
}

var (
	_ driver.Conn               = (*noTenantConn)(nil)
	_ driver.Pinger             = (*noTenantConn)(nil)
	_ driver.ConnPrepareContext = (*noTenantConn)(nil)
	_ driver.ConnBeginTx        = (*noTenantConn)(nil)
	_ driver.ExecerContext      = (*noTenantConn)(nil)
	_ driver.QueryerContext     = (*noTenantConn)(nil)
	_ driver.SessionResetter    = (*noTenantConn)(nil)
	_ driver.Validator          = (*noTenantConn)(nil)
)

func (n *noTenantConn) Ping(ctx context.Context) error {
	if n.c.closed.Load() {
		return ErrClosed
	}
	if _, ok := TenantFromContext(ctx); ok {
		// Handed to a caller with a tenant without ResetSession (database/sql's
		// background opener, with SetMaxOpenConns): do not claim success.
		return ErrNoTenant
	}
	t := n.c.settings.cfg.PingTenant
	if t == "" {
		return nil
	}
	conn, err := n.c.Connect(WithTenant(ctx, t))
	if err != nil {
		return fmt.Errorf("tenantpg: ping tenant %q: %w", t, err)
	}
	defer conn.Close()
	if err := conn.(driver.Pinger).Ping(ctx); err != nil {
		return fmt.Errorf("tenantpg: ping tenant %q: %w", t, err)
	}
	return nil
}

func (n *noTenantConn) Prepare(string) (driver.Stmt, error) { return nil, ErrNoTenant }

func (n *noTenantConn) PrepareContext(context.Context, string) (driver.Stmt, error) {
	return nil, ErrNoTenant
}

func (n *noTenantConn) Begin() (driver.Tx, error) { return nil, ErrNoTenant }

func (n *noTenantConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return nil, ErrNoTenant
}

func (n *noTenantConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return nil, ErrNoTenant
}

func (n *noTenantConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return nil, ErrNoTenant
}

// ResetSession refuses a caller that has a tenant, so that database/sql
// drops this connection and opens one from the tenant's pool.
func (n *noTenantConn) ResetSession(ctx context.Context) error {
	if _, ok := TenantFromContext(ctx); ok {
		return driver.ErrBadConn
	}
	return nil
}

func (n *noTenantConn) IsValid() bool { return !n.c.closed.Load() }

func (n *noTenantConn) Close() error { return nil }
