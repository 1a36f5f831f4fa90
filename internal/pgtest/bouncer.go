package pgtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// bouncer is a local pgbouncer process and its configuration.
type bouncer struct {
	bin      string
	ra       *runAs
	dir      string
	port     int
	pgHost   string
	pgPort   int
	settings map[string]string // [pgbouncer] section
	dbs      map[string]string // [databases] entries besides "*"

	mu     sync.Mutex // guards proc, closed
	proc   *process
	closed bool
}

// newBouncer prepares (but does not start) a pgbouncer for the given
// PostgreSQL server.
func newBouncer(bin string, ra *runAs, pgHost string, pgPort int, superUser string, opts Options) (*bouncer, error) {
	dir, err := ra.makeTempDir("tenantpg-bouncer-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	pool := opts.PoolSize
	if pool <= 0 {
		pool = 20
	}
	b := &bouncer{bin: bin, ra: ra, dir: dir, pgHost: pgHost, pgPort: pgPort}
	b.settings = map[string]string{
		"listen_addr":               "127.0.0.1",
		"unix_socket_dir":           "",
		"auth_type":                 "scram-sha-256",
		"auth_file":                 filepath.Join(dir, "userlist.txt"),
		"pool_mode":                 "transaction",
		"default_pool_size":         strconv.Itoa(pool),
		"max_client_conn":           "2000",
		"admin_users":               superUser,
		"ignore_startup_parameters": "extra_float_digits",
		"server_reset_query":        "",
		"logfile":                   filepath.Join(dir, "pgbouncer.log"),
		"pidfile":                   filepath.Join(dir, "pgbouncer.pid"),
		// Retry quickly after PostgreSQL restarts (default 15 s).
		"server_login_retry":     "1",
		"server_connect_timeout": "5",
	}
	for k, v := range opts.BouncerSettings {
		b.settings[k] = v
	}
	b.dbs = opts.BouncerDatabases
	return b, nil
}

// writeConfig writes pgbouncer.ini for the current port.
func (b *bouncer) writeConfig() error {
	var sb strings.Builder
	sb.WriteString("[databases]\n")
	for _, alias := range slices.Sorted(maps.Keys(b.dbs)) {
		fmt.Fprintf(&sb, "%s = host=%s port=%d %s\n", alias, b.pgHost, b.pgPort, b.dbs[alias])
	}
	fmt.Fprintf(&sb, "* = host=%s port=%d\n\n[pgbouncer]\n", b.pgHost, b.pgPort)
	b.settings["listen_port"] = strconv.Itoa(b.port)
	keys := make([]string, 0, len(b.settings))
	for k := range b.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s = %s\n", k, b.settings[k])
	}
	return b.ra.writeFile(b.iniPath(), []byte(sb.String()))
}

// iniPath returns the path of the configuration file.
func (b *bouncer) iniPath() string { return filepath.Join(b.dir, "pgbouncer.ini") }

// writeUserlist atomically rewrites the auth file with plain-text passwords.
func (b *bouncer) writeUserlist(users map[string]string) error {
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	var sb strings.Builder
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	for _, u := range names {
		fmt.Fprintf(&sb, "%s %s\n", q(u), q(users[u]))
	}
	return b.ra.writeFile(b.settings["auth_file"], []byte(sb.String()))
}

// start launches pgbouncer (in the foreground, as the server user) on b.port
// and waits until ready succeeds. With pickPort a fresh free port is chosen,
// retrying on collisions.
func (b *bouncer) start(ctx context.Context, pickPort bool, ready func(context.Context) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("pgtest: pgbouncer closed")
	}
	if b.proc != nil && !b.proc.exited() {
		return nil
	}
	attempts := 1
	if pickPort {
		attempts = 5
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		if pickPort {
			port, err := freePort()
			if err != nil {
				return err
			}
			b.port = port
		}
		if err := b.writeConfig(); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		_ = os.Remove(b.settings["pidfile"])
		p, err := startProcess(b.ra, b.dir, "pgbouncer", filepath.Join(b.dir, "pgbouncer.stderr"), b.bin, b.iniPath())
		if err != nil {
			return err
		}
		b.proc = p
		lastErr = waitReady(ctx, p, ready)
		if lastErr == nil {
			return nil
		}
		p.stop(syscall.SIGKILL, stopTimeout)
		tail := fileTail(b.settings["logfile"], 20)
		if !strings.Contains(tail+p.logTail(), "in use") || ctx.Err() != nil {
			return fmt.Errorf("pgtest: pgbouncer did not start: %w\n%s\n%s", lastErr, tail, p.logTail())
		}
	}
	return fmt.Errorf("pgtest: pgbouncer did not start: %w", lastErr)
}

// stop terminates pgbouncer (SIGTERM: immediate shutdown) and reaps it.
func (b *bouncer) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.proc.stop(syscall.SIGTERM, stopTimeout)
}

// running reports whether the pgbouncer process is up.
func (b *bouncer) running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.proc != nil && !b.proc.exited()
}

// close stops pgbouncer for good and removes its directory.
func (b *bouncer) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.proc.stop(syscall.SIGTERM, stopTimeout)
	return os.RemoveAll(b.dir)
}
