package tenantpg

import (
	"database/sql"
	"database/sql/driver"
	"fmt"
)

// DriverName is the name tenantpg registers with database/sql.
const DriverName = "tenantpg"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is the database/sql driver registered as "tenantpg". sql.Open calls
// OpenConnector, which parses the DSN with ParseConfig.
type Driver struct {
	c *Connector // set on the driver returned by Connector.Driver
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// Open exists to satisfy driver.Driver. It has no context and so no tenant:
// it always fails with ErrNoTenant. database/sql never calls it, because
// Driver implements driver.DriverContext.
func (d *Driver) Open(string) (driver.Conn, error) {
	return nil, fmt.Errorf("tenantpg: Driver.Open has no context to carry a tenant: %w", ErrNoTenant)
}

// OpenConnector parses dsn (see ParseConfig) and returns a new Connector.
// Errors match ErrInvalidConfig; sql.Open returns them.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return NewConnector(cfg)
}
