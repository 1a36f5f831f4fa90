package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Env is a running PostgreSQL cluster plus a PgBouncer in front of it,
// provisioned for tenants.
type Env struct {
	Host          string // PostgreSQL host, "127.0.0.1" for local clusters
	PGPort        int    // PostgreSQL port
	BouncerHost   string // PgBouncer host, "127.0.0.1" unless external
	BouncerPort   int    // PgBouncer port (transaction pool mode)
	SuperUser     string // superuser, also PgBouncer admin_users
	SuperPassword string // password of SuperUser
	AppUser       string // base login role "app"; tenant roles are "app.<tenant>"
	AppPassword   string // password of AppUser and of every tenant role
	AppDatabase   string // "app": the shared database holding schemas and the RLS table

	pg      *Server
	bouncer *bouncer // nil when PgBouncer is external

	mu      sync.Mutex // guards tenants and the auth file
	tenants map[string]bool

	closeOnce sync.Once
	closeErr  error
}

// Options configures [Start].
type Options struct {
	// Tenants are provisioned before Start returns.
	Tenants []string
	// PoolSize is PgBouncer's default_pool_size (default 20).
	PoolSize int
	// BouncerSettings adds or overrides keys of the [pgbouncer] section of
	// pgbouncer.ini (for example "query_wait_timeout": "5"). listen_port is
	// always set by the harness.
	BouncerSettings map[string]string
	// BouncerDatabases adds entries to the [databases] section of
	// pgbouncer.ini ahead of the "*" fallback: alias name to connection
	// string, for example "fixed": "dbname=app user=app" to force the
	// server login. The harness puts its PostgreSQL's host and port first.
	BouncerDatabases map[string]string
}

// Start starts a local PostgreSQL cluster and a PgBouncer in front of it and
// provisions opts.Tenants. It always starts local processes; see [Shared]
// for the variant honouring TENANTPG_TEST_PG_URL.
func Start(ctx context.Context, opts Options) (*Env, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	ra, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	pg, err := startLocalPostgres(ctx, bin, ra)
	if err != nil {
		return nil, err
	}
	return newEnv(ctx, pg, bin.pgbouncer, ra, "", opts)
}

// startFromEnv is Start honouring TENANTPG_TEST_PG_URL and
// TENANTPG_TEST_PGBOUNCER_ADDR.
func startFromEnv(ctx context.Context, opts Options) (*Env, error) {
	pgURL, bouncerAddr := externalConfig()
	if pgURL == "" {
		if bouncerAddr != "" {
			return nil, errors.New("pgtest: TENANTPG_TEST_PGBOUNCER_ADDR needs TENANTPG_TEST_PG_URL")
		}
		return Start(ctx, opts)
	}
	pg, err := externalServer(pgURL)
	if err != nil {
		return nil, err
	}
	var bin string
	var ra *runAs
	if bouncerAddr == "" {
		if bin, err = findPgBouncer(); err != nil {
			return nil, err
		}
		if ra, err = lookupRunAs(); err != nil {
			return nil, err
		}
	}
	return newEnv(ctx, pg, bin, ra, bouncerAddr, opts)
}

// newEnv provisions pg and starts (or attaches to) the PgBouncer.
func newEnv(ctx context.Context, pg *Server, bouncerBin string, ra *runAs, bouncerAddr string, opts Options) (e *Env, err error) {
	e = &Env{
		Host:          pg.Host,
		PGPort:        pg.Port,
		SuperUser:     pg.SuperUser,
		SuperPassword: pg.SuperPassword,
		AppUser:       pg.AppUser,
		AppPassword:   pg.AppPassword,
		AppDatabase:   pg.AppDatabase,
		pg:            pg,
		tenants:       map[string]bool{},
	}
	defer func() {
		if err != nil {
			e.Close()
			e = nil
		}
	}()
	if err := pg.Provision(ctx, opts.Tenants...); err != nil {
		return e, err
	}
	for _, t := range opts.Tenants {
		e.tenants[t] = true
	}
	if bouncerAddr != "" {
		host, port, err := net.SplitHostPort(bouncerAddr)
		if err != nil {
			return e, fmt.Errorf("pgtest: TENANTPG_TEST_PGBOUNCER_ADDR: %w", err)
		}
		e.BouncerHost = host
		if e.BouncerPort, err = strconv.Atoi(port); err != nil {
			return e, fmt.Errorf("pgtest: TENANTPG_TEST_PGBOUNCER_ADDR: %w", err)
		}
		return e, e.bouncerReady(ctx)
	}
	e.BouncerHost = "127.0.0.1"
	if e.bouncer, err = newBouncer(bouncerBin, ra, pg.Host, pg.Port, pg.SuperUser, opts); err != nil {
		return e, err
	}
	if err := e.writeUserlist(); err != nil {
		return e, err
	}
	if err := e.bouncer.start(ctx, true, func(ctx context.Context) error {
		e.BouncerPort = e.bouncer.port
		return e.bouncerReady(ctx)
	}); err != nil {
		return e, err
	}
	e.BouncerPort = e.bouncer.port
	return e, nil
}

// bouncerReady checks the admin console and, when PostgreSQL is up, a query
// as app through PgBouncer.
func (e *Env) bouncerReady(ctx context.Context) error {
	if err := e.BouncerAdmin(ctx, "SHOW VERSION"); err != nil {
		return err
	}
	if !e.pg.Running() {
		return nil
	}
	conn, err := connectURL(ctx, e.BouncerURL(e.AppUser, e.AppDatabase), true)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "select 1")
	return err
}

// writeUserlist rewrites the PgBouncer auth file with every known role.
// Callers hold e.mu or own e exclusively.
func (e *Env) writeUserlist() error {
	users := map[string]string{e.SuperUser: e.SuperPassword, e.AppUser: e.AppPassword}
	for t := range e.tenants {
		users[TenantRole(t)] = e.AppPassword
	}
	if err := e.bouncer.writeUserlist(users); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// Provision creates the objects of the given tenants (see [Server.Provision])
// and, with a local PgBouncer, adds their roles to its auth file and reloads
// it. It is idempotent and safe for concurrent use.
func (e *Env) Provision(ctx context.Context, tenants ...string) error {
	if err := e.pg.Provision(ctx, tenants...); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	added := false
	for _, t := range tenants {
		if !e.tenants[t] {
			e.tenants[t] = true
			added = true
		}
	}
	if !added || e.bouncer == nil {
		return nil
	}
	if err := e.writeUserlist(); err != nil {
		return err
	}
	if e.bouncer.running() {
		return e.BouncerAdmin(ctx, "RELOAD")
	}
	return nil
}

// Tenants returns the tenants provisioned through this Env, sorted.
func (e *Env) Tenants() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ts := make([]string, 0, len(e.tenants))
	for t := range e.tenants {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// Postgres returns the PostgreSQL server of the environment.
func (e *Env) Postgres() *Server { return e.pg }

// Close stops PgBouncer and PostgreSQL and removes the temporary
// directories; servers given by TENANTPG_TEST_PG_URL /
// TENANTPG_TEST_PGBOUNCER_ADDR are left running. It is idempotent.
func (e *Env) Close() error {
	if e == nil {
		return nil
	}
	e.closeOnce.Do(func() {
		var errs []error
		if e.bouncer != nil {
			errs = append(errs, e.bouncer.close())
		}
		errs = append(errs, e.pg.Close())
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// DirectURL returns the URL connecting user to database directly on
// PostgreSQL (postgres://user:pw@host:PGPort/database?sslmode=disable); the
// password is SuperPassword for SuperUser and AppPassword otherwise.
func (e *Env) DirectURL(user, database string) string {
	return buildURL(e.Host, e.PGPort, user, e.pg.password(user), database)
}

// BouncerURL is like DirectURL but connects through PgBouncer. pgx
// connections through it should use default_query_exec_mode=simple_protocol
// (or exec): PgBouncer 1.18 does not support named prepared statements in
// transaction mode.
func (e *Env) BouncerURL(user, database string) string {
	return buildURL(e.BouncerHost, e.BouncerPort, user, e.pg.password(user), database)
}

// ServerConnections returns the number of client backends in
// pg_stat_activity whose role name starts with usernamePrefix ("" counts
// all), excluding the querying backend; it connects directly to PostgreSQL
// as the superuser.
func (e *Env) ServerConnections(ctx context.Context, usernamePrefix string) (int, error) {
	return e.pg.ServerConnections(ctx, usernamePrefix)
}

// WaitServerConnections polls ServerConnections until it returns want or
// ctx is done, returning the last count seen.
func (e *Env) WaitServerConnections(ctx context.Context, usernamePrefix string, want int) (int, error) {
	return e.pg.WaitServerConnections(ctx, usernamePrefix, want)
}

// adminConn connects to the PgBouncer admin console as the superuser.
func (e *Env) adminConn(ctx context.Context) (*pgx.Conn, error) {
	conn, err := connectURL(ctx, e.BouncerURL(e.SuperUser, "pgbouncer"), true)
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer admin console: %w", err)
	}
	return conn, nil
}

// BouncerAdmin runs an admin console command (for example "RECONNECT",
// "PAUSE", "RESUME", "RELOAD", "KILL app") on the pgbouncer database as
// SuperUser, using the simple query protocol.
func (e *Env) BouncerAdmin(ctx context.Context, command string) error {
	conn, err := e.adminConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, command); err != nil {
		return fmt.Errorf("pgtest: pgbouncer %q: %w", command, err)
	}
	return nil
}

// BouncerShow runs an admin console command returning rows (for example
// "SHOW POOLS", "SHOW SERVERS") and returns them as column name to value
// maps.
func (e *Env) BouncerShow(ctx context.Context, command string) ([]map[string]any, error) {
	conn, err := e.adminConn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, command)
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer %q: %w", command, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer %q: %w", command, err)
	}
	return out, nil
}

// StopBouncer stops the local PgBouncer (SIGTERM, immediate shutdown);
// StartBouncer starts it again on the same port.
func (e *Env) StopBouncer() error {
	if e.bouncer == nil {
		return errExternal
	}
	e.bouncer.stop()
	return nil
}

// StartBouncer starts a stopped local PgBouncer on the same port and waits
// until it is ready. It is a no-op when PgBouncer is running.
func (e *Env) StartBouncer(ctx context.Context) error {
	if e.bouncer == nil {
		return errExternal
	}
	e.mu.Lock()
	err := e.writeUserlist()
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return e.bouncer.start(ctx, false, e.bouncerReady)
}

// RestartBouncer stops and starts the local PgBouncer on the same port; all
// client and server connections through it are dropped.
func (e *Env) RestartBouncer(ctx context.Context) error {
	if err := e.StopBouncer(); err != nil {
		return err
	}
	return e.StartBouncer(ctx)
}

// BouncerLogPath returns the path of the local PgBouncer log ("" when
// external).
func (e *Env) BouncerLogPath() string {
	if e.bouncer == nil {
		return ""
	}
	return e.bouncer.settings["logfile"]
}

// StopPostgres stops the local PostgreSQL (fast shutdown); StartPostgres
// starts it again on the same port.
func (e *Env) StopPostgres() error { return e.pg.Stop() }

// KillPostgres SIGKILLs the local PostgreSQL postmaster, simulating a crash;
// StartPostgres restarts it (with crash recovery) on the same port.
func (e *Env) KillPostgres() error { return e.pg.Kill() }

// StartPostgres starts the stopped local PostgreSQL on the same port and
// waits until it accepts connections.
func (e *Env) StartPostgres(ctx context.Context) error { return e.pg.Start(ctx) }

// RestartPostgres restarts the local PostgreSQL (fast shutdown) on the same
// port. PgBouncer stays up and reconnects on demand.
func (e *Env) RestartPostgres(ctx context.Context) error { return e.pg.Restart(ctx) }
