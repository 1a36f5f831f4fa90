package tenantpg

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults for the Config fields whose zero value means "use the default".
const (
	// DefaultPoolIdle is how long a tenant pool that served no checkout lives.
	DefaultPoolIdle = 5 * time.Minute
	// DefaultRejectTTL is how long a tenant rejected by the server fails fast.
	DefaultRejectTTL = 10 * time.Second
	// DefaultTenantMaxConns is the per-tenant pool size when the DSN sets no
	// pool_max_conns (pgxpool's own default grows with the CPU count, which
	// multiplied by the tenant count is rarely what anyone wants).
	DefaultTenantMaxConns = 4
)

// ResolveFunc maps a tenant to its connection settings. It receives a copy of
// the base pool configuration, with any DSN templates already applied, and may
// change anything in it: host, port, user, password, database, TLS, runtime
// (startup) parameters, pool sizes. Returning an error fails the request with
// that error (wrap ErrInvalidTenant for an unknown tenant). It runs once per
// tenant until the tenant's pool is closed for idleness, and concurrently for
// different tenants.
type ResolveFunc func(ctx context.Context, tenant string, pool *pgxpool.Config) error

// Config configures a Connector. Build one with ParseConfig, or fill it in
// yourself with Pool from pgxpool.ParseConfig.
type Config struct {
	// Pool is the configuration every tenant pool starts from. Its pool
	// sizes (MaxConns, MinConns, MaxConnIdleTime, ...) apply per tenant.
	// Required; must come from pgxpool.ParseConfig. Its acquire hooks
	// (BeforeAcquire, PrepareConn, AfterRelease) run when tenantpg acquires
	// a connection from pgxpool or gives it back, not for every
	// database/sql checkout: tenantpg keeps a connection between its
	// tenant's checkouts for up to a second idle and 10 seconds in all (or
	// MaxConnLifetime if shorter). Do not rely on AfterRelease to clean a
	// session between requests; tenants never share one anyway. PrepareConn
	// also runs on a pool's idle connections when the budget evicts one of
	// them (pgxpool's AcquireAllIdle), and BeforeClose on every connection
	// closed, evicted ones included. After BeforeAcquire, PrepareConn,
	// AfterRelease or ShouldPing had a connection, the next transaction on
	// it prepares its statements again (they may have deallocated them:
	// docs/architecture.md, "Statements").
	Pool *pgxpool.Config

	// User is the login user template (DSN tenant_user), e.g. "{user}.{tenant}"
	// for Supavisor. {user} is Pool's user.
	User string
	// Database is the database template (DSN tenant_database), e.g.
	// "{tenant}" for a PgBouncer alias per tenant. {database} is Pool's.
	Database string
	// Schema is the search_path template (DSN tenant_schema): a comma
	// separated list of schema names, e.g. "{tenant}" or "t_{tenant},public".
	// Each name is quoted and the result is sent as the search_path startup
	// parameter.
	Schema string
	// Setting names a custom setting (DSN tenant_setting), prefix.name such
	// as "app.tenant_id", sent as a startup parameter whose value is the
	// tenant id, for row-level security policies that read current_setting.
	// A name without a dot (a built-in setting) is ErrInvalidConfig.
	Setting string

	// Pattern is the regular expression a tenant id must match as a whole
	// (DSN tenant_pattern). Empty means DefaultPattern.
	Pattern string
	// MaxConns caps physical connections across all tenant pools (DSN
	// tenant_max_conns). 0 means no global cap.
	MaxConns int
	// PoolIdle is how long a tenant pool that served no checkout lives (DSN
	// tenant_pool_idle). 0 means DefaultPoolIdle; negative means forever.
	PoolIdle time.Duration
	// RejectTTL is how long requests for a tenant that the server rejected
	// fail fast without dialing (DSN tenant_reject_ttl). 0 means
	// DefaultRejectTTL; negative disables the negative cache.
	RejectTTL time.Duration
	// Verify selects the identity check run once per new physical
	// connection (DSN tenant_verify): "" or "on" checks user, database and,
	// when rewritten, search_path and the setting; "off" checks nothing; a
	// comma separated subset of "user,database,schema,setting" checks those.
	Verify string
	// PingTenant, when set (DSN tenant_ping), makes a Ping whose context
	// carries no tenant ping this tenant's pool instead of only checking
	// that the connector is open.
	PingTenant string

	// Resolve, when set, is called for each new tenant after the templates
	// are applied. It is the only way to route tenants to different hosts
	// or credentials.
	Resolve ResolveFunc
	// SharePools lets tenants whose resolved configurations connect to the
	// same place as the same login, with the same password, startup
	// parameters, exec mode, pool size and TLS roots and certificates, share
	// one pool. The first tenant's configuration is then used for all of
	// them, including hooks and callbacks that Resolve set, so enable it only
	// when Resolve sets none that depend on the tenant. Off by default:
	// each tenant gets its own pool.
	SharePools bool

	// Logger, when set, receives structured events, each with the
	// message prefix "tenantpg: ": pool created (Info), pool closed (Info,
	// with the reason idle, no tenants or budget), tenant rejected (Warn),
	// identity check failed (Error), connection budget exhausted (Warn),
	// waiting for the connection budget and idle connection closed for the
	// connection budget (Debug).
	Logger *slog.Logger
}

// ParseConfig parses a PostgreSQL URL or keyword/value DSN with tenant_*
// parameters. Every parameter whose name starts with "tenant_" is tenantpg's
// and is removed before pgxpool.ParseConfig parses the rest; an unknown
// tenant_* name is an error. Unless the DSN sets default_query_exec_mode, a
// DSN that routes through a pooler (tenant_user or tenant_database) gets
// pgx's "exec" mode, which is safe with transaction pooling. Unless it sets
// pool_max_conns, each tenant pool holds at most DefaultTenantMaxConns
// connections (fewer if tenant_max_conns is smaller). Errors match
// ErrInvalidConfig.
func ParseConfig(dsn string) (*Config, error) {
	rest, tp, keys, err := splitDSN(dsn)
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	cfg := &Config{Pool: pc}
	for k, v := range tp {
		switch k {
		case "tenant_user":
			cfg.User = v
		case "tenant_database":
			cfg.Database = v
		case "tenant_schema":
			cfg.Schema = v
		case "tenant_setting":
			cfg.Setting = v
		case "tenant_pattern":
			cfg.Pattern = v
		case "tenant_verify":
			cfg.Verify = v
		case "tenant_ping":
			cfg.PingTenant = v
		case "tenant_max_conns":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, invalidConfig("tenant_max_conns=%q: want a whole number >= 0", v)
			}
			cfg.MaxConns = n
		case "tenant_pool_idle", "tenant_reject_ttl":
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, invalidConfig("%s=%q: want a duration such as 5m: %v", k, v, err)
			}
			if d == 0 {
				d = -1 // an explicit 0 means "never" / "disabled", not "default"
			}
			if k == "tenant_pool_idle" {
				cfg.PoolIdle = d
			} else {
				cfg.RejectTTL = d
			}
		default:
			return nil, invalidConfig("unknown DSN parameter %s (tenantpg knows tenant_user, tenant_database, tenant_schema, tenant_setting, tenant_pattern, tenant_max_conns, tenant_pool_idle, tenant_reject_ttl, tenant_verify, tenant_ping)", k)
		}
	}
	if !keys["default_query_exec_mode"] && (cfg.User != "" || cfg.Database != "") {
		pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	if !keys["pool_max_conns"] {
		pc.MaxConns = DefaultTenantMaxConns
		if cfg.MaxConns > 0 && int(pc.MaxConns) > cfg.MaxConns {
			pc.MaxConns = int32(cfg.MaxConns)
		}
	}
	if _, err := compile(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// settings is a validated Config.
type settings struct {
	cfg        Config
	user, db   *template
	schema     *schemaTemplate
	pattern    *regexp.Regexp
	verify     verifySet
	poolIdle   time.Duration // <= 0: never
	rejectTTL  time.Duration // <= 0: disabled
	baseUser   string
	baseDB     string
	hasRewrite bool
}

type verifySet struct{ user, database, schema, setting bool }

// settingName is a custom setting's name: prefix.name. A built-in setting
// (search_path, role, statement_timeout, ...) set to the tenant id would
// change the session in ways tenant_setting is not for.
var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$`)

// compile validates cfg. Errors match ErrInvalidConfig.
func compile(cfg *Config) (*settings, error) {
	if cfg == nil || cfg.Pool == nil {
		return nil, invalidConfig("Config.Pool is required (use pgxpool.ParseConfig)")
	}
	s := &settings{cfg: *cfg, baseUser: cfg.Pool.ConnConfig.User, baseDB: cfg.Pool.ConnConfig.Database}
	var err error
	if cfg.User != "" {
		if s.user, err = parseTemplate("tenant_user", cfg.User, true); err != nil {
			return nil, err
		}
	}
	if cfg.Database != "" {
		if s.db, err = parseTemplate("tenant_database", cfg.Database, true); err != nil {
			return nil, err
		}
	}
	if cfg.Schema != "" {
		if s.schema, err = parseSchemaTemplate("tenant_schema", cfg.Schema); err != nil {
			return nil, err
		}
	}
	if cfg.Setting != "" && !settingName.MatchString(cfg.Setting) {
		return nil, invalidConfig("tenant_setting %q is not a custom setting name (prefix.name) such as app.tenant_id", cfg.Setting)
	}
	s.hasRewrite = s.user != nil || s.db != nil || s.schema != nil || cfg.Setting != ""
	if !s.hasRewrite && cfg.Resolve == nil {
		return nil, invalidConfig("nothing routes tenants: add tenant_user (e.g. {user}.{tenant} for Supavisor), " +
			"tenant_database (e.g. {tenant} for a PgBouncer alias), tenant_schema or tenant_setting to the DSN, " +
			"or set Config.Resolve")
	}
	pattern := cfg.Pattern
	if pattern == "" {
		pattern = DefaultPattern
	}
	if s.pattern, err = compilePattern(pattern); err != nil {
		return nil, err
	}
	if cfg.MaxConns < 0 {
		return nil, invalidConfig("MaxConns %d is negative", cfg.MaxConns)
	}
	if cfg.MaxConns > 0 && int(cfg.Pool.MaxConns) > cfg.MaxConns {
		return nil, invalidConfig("pool_max_conns=%d (per tenant) exceeds tenant_max_conns=%d (all tenants)", cfg.Pool.MaxConns, cfg.MaxConns)
	}
	if cfg.MaxConns > 0 && int(max(cfg.Pool.MinConns, cfg.Pool.MinIdleConns)) > 0 {
		return nil, invalidConfig("pool_min_conns/pool_min_idle_conns must be 0 with tenant_max_conns: idle tenants would hold the budget")
	}
	if (s.user != nil || s.db != nil) && cfg.Pool.ConnConfig.DefaultQueryExecMode == pgx.QueryExecModeDescribeExec {
		return nil, invalidConfig("default_query_exec_mode=describe_exec returns other clients' results through a transaction pooler; use exec, cache_describe or simple_protocol")
	}
	switch {
	case cfg.PoolIdle == 0:
		s.poolIdle = DefaultPoolIdle
	default:
		s.poolIdle = cfg.PoolIdle
	}
	switch {
	case cfg.RejectTTL == 0:
		s.rejectTTL = DefaultRejectTTL
	default:
		s.rejectTTL = cfg.RejectTTL
	}
	if s.verify, err = parseVerify(cfg.Verify); err != nil {
		return nil, err
	}
	if cfg.PingTenant != "" {
		if err := validateTenant(cfg.PingTenant, s.pattern); err != nil {
			return nil, invalidConfig("tenant_ping: %v", err)
		}
	}
	return s, nil
}

func parseVerify(v string) (verifySet, error) {
	switch strings.TrimSpace(v) {
	case "", "on", "all":
		return verifySet{true, true, true, true}, nil
	case "off", "none":
		return verifySet{}, nil
	}
	var vs verifySet
	for _, f := range strings.Split(v, ",") {
		switch strings.TrimSpace(f) {
		case "user":
			vs.user = true
		case "database":
			vs.database = true
		case "schema":
			vs.schema = true
		case "setting":
			vs.setting = true
		default:
			return vs, invalidConfig("tenant_verify=%q: want on, off, or a list of user, database, schema, setting", v)
		}
	}
	return vs, nil
}
