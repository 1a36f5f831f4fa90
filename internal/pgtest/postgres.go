package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// DefaultAppUser is the base login role created by Provision.
	DefaultAppUser = "app"
	// DefaultAppDatabase is the shared database holding the tenant schemas
	// and the RLS table.
	DefaultAppDatabase = "app"
	// DefaultAppPassword is the password of app and of every app.<tenant>
	// role unless TENANTPG_TEST_APP_PASSWORD overrides it.
	DefaultAppPassword = "tenantpg-app-secret"
	// DefaultSuperUser is the superuser of locally started clusters.
	DefaultSuperUser = "postgres"

	readyTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
)

// errExternal is returned by lifecycle helpers in external mode.
var errExternal = errors.New("pgtest: not supported for an external server (TENANTPG_TEST_PG_URL / TENANTPG_TEST_PGBOUNCER_ADDR)")

// appPassword returns the password of app and the tenant roles.
func appPassword() string {
	if pw := os.Getenv("TENANTPG_TEST_APP_PASSWORD"); pw != "" {
		return pw
	}
	return DefaultAppPassword
}

// Server is a PostgreSQL cluster: either started by [StartPostgres] (a local
// throwaway cluster) or an external server given by TENANTPG_TEST_PG_URL.
type Server struct {
	Host          string // "127.0.0.1" for local clusters
	Port          int    // TCP port
	SuperUser     string // superuser name
	SuperPassword string // superuser password
	AppUser       string // base login role, "app"
	AppPassword   string // password of AppUser and of every "app.<tenant>"
	AppDatabase   string // shared database, "app"

	external bool
	maintDB  string // database for cluster-wide statements
	bin      binaries
	ra       *runAs
	dir      string // temporary directory (local only)
	dataDir  string

	mu     sync.Mutex // guards proc, closed
	proc   *process
	closed bool

	prov provisioner
}

// StartPostgres initialises and starts a new local PostgreSQL cluster on a
// free port of 127.0.0.1. Call Provision to create the tenant objects and
// Close to stop it.
func StartPostgres(ctx context.Context) (*Server, error) {
	bin, err := findPostgres()
	if err != nil {
		return nil, err
	}
	ra, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	return startLocalPostgres(ctx, bin, ra)
}

// startLocalPostgres runs initdb and starts postgres.
func startLocalPostgres(ctx context.Context, bin binaries, ra *runAs) (*Server, error) {
	dir, err := ra.makeTempDir("tenantpg-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{
		Host:          "127.0.0.1",
		SuperUser:     DefaultSuperUser,
		SuperPassword: randomPassword(),
		AppUser:       DefaultAppUser,
		AppPassword:   appPassword(),
		AppDatabase:   DefaultAppDatabase,
		maintDB:       "postgres",
		bin:           bin,
		ra:            ra,
		dir:           dir,
		dataDir:       filepath.Join(dir, "data"),
	}
	s.prov.init(s)
	if err := s.initdb(ctx); err != nil {
		s.Close()
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Port = port
		lastErr = s.start(ctx)
		if lastErr == nil {
			return s, nil
		}
		if !errors.Is(lastErr, errPortInUse) || ctx.Err() != nil {
			break
		}
	}
	s.Close()
	return nil, lastErr
}

// externalServer describes the PostgreSQL given by a superuser URL.
func externalServer(rawURL string) (*Server, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("pgtest: TENANTPG_TEST_PG_URL: %w", err)
	}
	s := &Server{
		Host:          cfg.Host,
		Port:          int(cfg.Port),
		SuperUser:     cfg.User,
		SuperPassword: cfg.Password,
		AppUser:       DefaultAppUser,
		AppPassword:   appPassword(),
		AppDatabase:   DefaultAppDatabase,
		external:      true,
		maintDB:       cfg.Database,
	}
	if s.maintDB == "" {
		s.maintDB = "postgres"
	}
	s.prov.init(s)
	return s, nil
}

// initdb creates the data directory.
func (s *Server) initdb(ctx context.Context) error {
	pwfile := filepath.Join(s.dir, "pwfile")
	if err := s.ra.writeFile(pwfile, []byte(s.SuperPassword+"\n")); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer os.Remove(pwfile)
	if err := runCommand(ctx, s.ra, s.dir, s.bin.initdb,
		"-D", s.dataDir,
		"-U", s.SuperUser,
		"--pwfile="+pwfile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--locale=C",
		"--encoding=UTF8",
		"--no-sync",
	); err != nil {
		return err
	}
	// In the configuration file rather than on the command line, so that
	// ALTER SYSTEM and a restart can change it (the benchmark raises it).
	conf := filepath.Join(s.dataDir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("\nmax_connections = 300\n"); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// errPortInUse marks a start failure caused by a port collision.
var errPortInUse = errors.New("pgtest: port already in use")

// start starts postgres on s.Port and waits until it accepts connections.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("pgtest: server closed")
	}
	if s.proc != nil && !s.proc.exited() {
		return nil
	}
	// After Kill, the killed postmaster's backends hold its shared memory
	// until they notice and exit, a few milliseconds later (longer on a
	// loaded machine); a postmaster started before refuses to run.
	for attempt := 1; ; attempt++ {
		err := s.startOnce(ctx)
		if !errors.Is(err, errShmInUse) || attempt == 50 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// errShmInUse is start's error when an earlier postmaster's processes
// still hold the cluster's shared memory.
var errShmInUse = errors.New("pgtest: the cluster's shared memory is still in use by exiting processes")

// startOnce starts the postmaster once; s.mu is held.
func (s *Server) startOnce(ctx context.Context) error {
	logPath := filepath.Join(s.dir, "postgres.log")
	p, err := startProcess(s.ra, s.dir, "postgres", logPath, s.bin.postgres,
		"-D", s.dataDir,
		"-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=64MB",
		"-c", "password_encryption=scram-sha-256",
		"-c", "logging_collector=off",
	)
	if err != nil {
		return err
	}
	s.proc = p
	if err := waitReady(ctx, p, func(ctx context.Context) error {
		conn, err := s.connect(ctx, s.SuperUser, s.maintDB)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	}); err != nil {
		p.stop(syscall.SIGKILL, time.Second)
		tail := p.logTail()
		if strings.Contains(tail, "pre-existing shared memory block") && strings.Contains(tail, "is still in use") {
			return fmt.Errorf("%w: %v", errShmInUse, err)
		}
		if strings.Contains(tail, "already in use") || strings.Contains(tail, "could not bind") ||
			strings.Contains(tail, "could not create any TCP/IP sockets") {
			return fmt.Errorf("%w: %d: %v", errPortInUse, s.Port, err)
		}
		return fmt.Errorf("pgtest: postgres did not start: %w\n%s", err, tail)
	}
	return nil
}

// waitReady polls check until it succeeds, the process exits or readyTimeout
// passes.
func waitReady(ctx context.Context, p *process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var lastErr error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited: %v (last connection error: %v)", p.name, p.waitErr, lastErr)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		lastErr = check(cctx)
		ccancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last error: %v)", p.name, ctx.Err(), lastErr)
		case <-p.done:
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// Stop shuts the local cluster down (fast shutdown: sessions are terminated)
// and leaves the data directory in place; Start brings it back on the same
// port.
func (s *Server) Stop() error {
	if s.external {
		return errExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc.stop(syscall.SIGINT, stopTimeout)
	return nil
}

// Kill terminates the local cluster abruptly (SIGKILL of the postmaster),
// simulating a crash; Start then performs crash recovery.
func (s *Server) Kill() error {
	if s.external {
		return errExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc.stop(syscall.SIGKILL, stopTimeout)
	return nil
}

// Start starts a stopped local cluster again on the same port and waits until
// it accepts connections. It is a no-op when the server is running.
func (s *Server) Start(ctx context.Context) error {
	if s.external {
		return errExternal
	}
	return s.start(ctx)
}

// Restart stops (fast shutdown) and starts the local cluster on the same
// port.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start(ctx)
}

// Running reports whether the server process is up (always true for an
// external server).
func (s *Server) Running() bool {
	if s.external {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

// Close stops a local cluster (immediate shutdown) and removes its temporary
// directory. It does nothing for an external server. It is idempotent.
func (s *Server) Close() error {
	if s == nil || s.external {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.proc.stop(syscall.SIGQUIT, stopTimeout)
	if s.dir != "" {
		if err := os.RemoveAll(s.dir); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

// LogPath returns the path of the postgres server log ("" when external).
func (s *Server) LogPath() string {
	if s.external {
		return ""
	}
	return filepath.Join(s.dir, "postgres.log")
}

// password returns the password of a role: SuperPassword for SuperUser,
// AppPassword for every other role.
func (s *Server) password(user string) string {
	if user == s.SuperUser {
		return s.SuperPassword
	}
	return s.AppPassword
}

// URL returns postgres://user:pw@host:port/database?sslmode=disable for this
// server; the password is SuperPassword for SuperUser and AppPassword for any
// other role.
func (s *Server) URL(user, database string) string {
	return buildURL(s.Host, s.Port, user, s.password(user), database)
}

// buildURL formats a connection URL.
func buildURL(host string, port int, user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(host, strconv.Itoa(port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// connect opens a pgx connection to this server.
func (s *Server) connect(ctx context.Context, user, database string) (*pgx.Conn, error) {
	return connectURL(ctx, s.URL(user, database), false)
}

// connectURL opens a pgx connection, optionally in simple protocol mode.
func connectURL(ctx context.Context, rawURL string, simple bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if simple {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// ServerConnections returns the number of client backends whose role name
// starts with usernamePrefix ("" counts all), excluding the backend running
// the query. It connects directly as the superuser.
func (s *Server) ServerConnections(ctx context.Context, usernamePrefix string) (int, error) {
	conn, err := s.connect(ctx, s.SuperUser, s.maintDB)
	if err != nil {
		return 0, fmt.Errorf("pgtest: ServerConnections: %w", err)
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `select count(*) from pg_stat_activity
		where backend_type = 'client backend' and pid <> pg_backend_pid()
		  and starts_with(coalesce(usename::text, ''), $1)`, usernamePrefix).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pgtest: ServerConnections: %w", err)
	}
	return n, nil
}

// WaitServerConnections polls [Server.ServerConnections] until it returns
// want or ctx is done; backends exit asynchronously after a client
// disconnects, so tests should wait rather than count once. It returns the
// last count seen.
func (s *Server) WaitServerConnections(ctx context.Context, usernamePrefix string, want int) (int, error) {
	for {
		n, err := s.ServerConnections(ctx, usernamePrefix)
		if err == nil && n == want {
			return n, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("pgtest: %d server connections for prefix %q, want %d: %w", n, usernamePrefix, want, ctx.Err())
			}
			return n, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: pick free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randomPassword returns a random hex password.
func randomPassword() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
