package tenantpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Conn is the driver.Conn tenantpg gives database/sql. It is a handle that
// holds no server connection of its own: each checkout binds it to a
// connection of the checkout's tenant (Connect, or ResetSession when
// database/sql reuses it from its idle pool), and giving it back (IsValid,
// Close) parks that connection with its tenant's pool. database/sql's idle
// pool is one list for every tenant; the handles in it are interchangeable,
// so reusing one never offers a tenant another tenant's connection, and
// same-tenant reuse costs what database/sql's own idle reuse costs.
//
// A checkout without a tenant leaves the handle unbound until an operation
// whose context has a tenant binds it to that tenant for the rest of the
// checkout; its later operations whose context names another tenant fail
// with ErrSessionTenant. database/sql needs this with SetMaxOpenConns: it
// opens handles for queued callers in the background, with a context of its
// own, and hands them over without ResetSession. Unbound, Ping succeeds
// while the connector is open (or pings tenant_ping's pool when configured)
// and every other operation fails with ErrNoTenant.
//
// Reach the pgx connection with (*sql.Conn).Raw:
//
//	conn.Raw(func(dc any) error { pgxConn, err := dc.(*tenantpg.Conn).ConnContext(ctx); ... })
type Conn struct {
	// The first cache line holds what a checkout and its release touch
	// (see park.go for why that matters).
	c  *Connector
	pc *pconn       // the tenant's connection; nil when unbound
	sc *stdlib.Conn // pc.sc

	// The connection this handle held last, which a checkout for the same
	// tenant claims again without a lookup or a lock while it is parked
	// and its entry still serves tenant as of lastGen (see pconn).
	last    *pconn
	lastGen uint32
	bare    bool   // pc.bare: see pgxCtx
	unbound bool   // the checkout had no tenant and no operation has bound it (counted in Stats.NoTenant at release)
	late    bool   // the checkout had no tenant and its first operation bound it: see bound
	tenant  string // the tenant of the checkout, or of the last one while the handle is idle; "" for none

	err error // why binding this checkout failed; operations return it (see bound)
	// errCtx: err came from the context of the bind that failed (it ended
	// while waiting for a connection); an operation under a live context
	// binds again instead of returning err.
	errCtx bool
	_      [55]byte // to a multiple of 64 bytes (layout_test.go)
}

var (
	_ driver.Conn               = (*Conn)(nil)
	_ driver.Pinger             = (*Conn)(nil)
	_ driver.ConnPrepareContext = (*Conn)(nil)
	_ driver.ConnBeginTx        = (*Conn)(nil)
	_ driver.ExecerContext      = (*Conn)(nil)
	_ driver.QueryerContext     = (*Conn)(nil)
	_ driver.NamedValueChecker  = (*Conn)(nil)
	_ driver.SessionResetter    = (*Conn)(nil)
	_ driver.Validator          = (*Conn)(nil)
)

// Conn returns the pgx connection of the checkout's tenant for pgx-native
// work inside (*sql.Conn).Raw (COPY, LISTEN, batches, registering types).
// It returns nil when the checkout is not bound: it had no tenant, or its
// connection could not be obtained; ConnContext binds it and says why not.
// The connection must not be used after Raw returns.
func (h *Conn) Conn() *pgx.Conn {
	if h.sc == nil {
		return nil
	}
	return h.expose()
}

// expose returns the checkout's pgx connection to code that may change its
// type map, so its scan plans are dropped: the next query plans with the
// map as it is then, as stdlib would (see scanCache).
func (h *Conn) expose() *pgx.Conn {
	h.pc.st.scan = nil
	h.pc.st.markUnsure()
	return h.sc.Conn()
}

// ConnContext is Conn for a checkout that may not be bound yet: one that
// had no tenant (database/sql's background opener, with SetMaxOpenConns,
// hands a caller a handle it opened with a context of its own) binds here to
// the tenant of ctx, as its first operation would. It returns ErrNoTenant
// when neither the checkout nor ctx has a tenant, and otherwise the error of
// binding (a *BudgetError, a *RejectedError, ErrClosed, ...).
func (h *Conn) ConnContext(ctx context.Context) (*pgx.Conn, error) {
	if _, err := h.bound(ctx); err != nil {
		return nil, err
	}
	return h.expose(), nil
}

// Tenant returns the tenant of the current checkout, "" if it has none.
func (h *Conn) Tenant() string { return h.tenant }

// checkout binds the handle to a connection of ctx's tenant. A failure is
// kept and returned by the checkout's operations, but for one caused by
// ctx ending (a *BudgetError, a wait for a busy pool cut short): an
// operation under a live context binds again (see bound).
func (h *Conn) checkout(ctx context.Context) error {
	tenant, ok := TenantFromContext(ctx)
	if !ok {
		h.tenant, h.last = "", nil
		h.unbound = true
		return nil
	}
	if pc := h.last; pc != nil && h.tenant == tenant && pc.claim() {
		switch {
		case pc.e.mapGen.Load() != h.lastGen: // the tenant was unmapped since: look it up
			pc.e.release(pc)
		case h.c.usable(pc):
			pc.uses.Add(1)
			h.bind(pc)
			return nil
		default:
			pc.e.giveBack(pc)
		}
	}
	h.tenant = tenant
	pc, gen, err := h.c.acquire(ctx, tenant)
	if err != nil {
		h.last = nil
		h.err, h.errCtx = err, ctx.Err() != nil
		return err
	}
	h.bind(pc)
	h.last, h.lastGen = pc, gen
	return nil
}

func (h *Conn) bind(pc *pconn) {
	h.pc, h.sc = pc, pc.sc
	h.bare = pc.bare
}

// pgxCtx returns the context to give pgx for an operation of the checkout
// under ctx with args. pgx watches a context for cancellation on every
// query (a mutex taken twice, and a callback registered when it can be
// cancelled) unless it is context.Background() itself.
// WithTenant(context.Background(), t) cannot be cancelled either and holds
// nothing but the tenant; pgx gets context.Background() instead when
// nothing could read the tenant from it: the connection has no query
// tracer, and args have no pgx.QueryRewriter among their leading options. A query under
// such a context then costs what it costs without tenantpg (see
// docs/architecture.md, "pgx's context watch").
func (h *Conn) pgxCtx(ctx context.Context, args []driver.NamedValue) context.Context {
	if tc, ok := ctx.(*tenantCtx); ok && h.bare && tc.Context == context.Background() {
		if rewrites(args) {
			return ctx
		}
		return context.Background()
	}
	return ctx
}

// rewrites reports whether args has a pgx.QueryRewriter among the options
// pgx reads from their start (exec mode, result formats, rewriter, in any
// order).
func rewrites(args []driver.NamedValue) bool {
	for _, a := range args {
		switch a.Value.(type) {
		case pgx.QueryRewriter:
			return true
		case pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
		default:
			return false
		}
	}
	return false
}

// release ends the checkout: the connection is parked with its pool.
func (h *Conn) release() {
	// err sits in the handle's second cache line, which a release writes
	// only when it holds something (see "Cache lines" in park.go).
	if h.sc != nil {
		h.c.park(h.pc)
		h.pc, h.sc, h.late = nil, nil, false
	} else if h.unbound {
		h.unbound = false
		h.c.noTenant.Add(1)
	}
	if h.err != nil {
		h.err, h.errCtx = nil, false
	}
}

// bound returns the checkout's connection for an operation under ctx, or
// the reason there is none. A checkout without a tenant binds here to the
// tenant of ctx, if it has one, and is then late: its tenant was chosen by
// this operation, so operations for another tenant fail (see Conn).
func (h *Conn) bound(ctx context.Context) (*stdlib.Conn, error) {
	switch {
	case h.sc != nil:
		if h.late {
			if t, ok := TenantFromContext(ctx); ok && t != h.tenant {
				return nil, fmt.Errorf("%w: %q, not %q (the session had no tenant until its first operation)", ErrSessionTenant, h.tenant, t)
			}
		}
		return h.sc, nil
	case h.err != nil && (!h.errCtx || ctx.Err() != nil):
		return nil, h.err
	case h.c.closed.Load():
		return nil, ErrClosed
	case h.err != nil:
		// The bind failed only because its context ended, and this
		// operation's is alive: bind again, to the checkout's tenant.
		h.err, h.errCtx = nil, false
		bctx := ctx
		if t, ok := TenantFromContext(ctx); !ok || t != h.tenant {
			bctx = WithTenant(ctx, h.tenant)
		}
		if err := h.checkout(bctx); err != nil {
			return nil, err
		}
		return h.sc, nil
	}
	if _, ok := TenantFromContext(ctx); ok {
		h.unbound = false
		err := h.checkout(ctx)
		if err != nil {
			if h.errCtx {
				// This operation's context ended: the failure is its own,
				// and the checkout stays unbound for the next one.
				h.err, h.errCtx, h.unbound, h.tenant = nil, false, true, ""
			}
			return nil, err
		}
		h.late = true
		return h.sc, nil
	}
	return nil, ErrNoTenant
}

// ResetSession binds a handle that database/sql takes from its idle pool to
// the tenant of the caller's ctx. An error in doing so is returned by the
// checkout's operations rather than here, because database/sql ignores
// ResetSession errors other than driver.ErrBadConn, and retrying on another
// handle would fail the same way.
func (h *Conn) ResetSession(ctx context.Context) error {
	h.release() // normally done already by IsValid
	if h.c.closed.Load() {
		return driver.ErrBadConn
	}
	_ = h.checkout(ctx)
	return nil
}

// IsValid is called by database/sql when the handle comes back; it parks
// the connection so that the handle waits unbound in database/sql's idle
// pool. It reports false once the connector is closed.
func (h *Conn) IsValid() bool {
	h.release()
	return !h.c.closed.Load()
}

// Close parks the connection, if any.
func (h *Conn) Close() error {
	h.release()
	h.last = nil
	return nil
}

// Ping pings the checkout's connection, binding an unbound checkout to
// ctx's tenant first. Without a tenant in either it succeeds while the
// connector is open, or pings tenant_ping's pool when configured. It
// returns driver.ErrBadConn when the ping found the connection broken, and
// ctx's error when ctx ended before the ping was sent (the connection
// stays usable).
func (h *Conn) Ping(ctx context.Context) error {
	sc, err := h.bound(ctx)
	if err == nil {
		return ping(h.pgxCtx(ctx, nil), sc.Conn())
	}
	if err != ErrNoTenant { // bound returns the sentinel itself when neither has a tenant
		return err
	}
	t := h.c.settings.cfg.PingTenant
	if t == "" {
		return nil
	}
	pc, _, err := h.c.acquire(WithTenant(ctx, t), t)
	if err != nil {
		return fmt.Errorf("tenantpg: ping tenant %q: %w", t, err)
	}
	defer h.c.park(pc)
	if err := ping(ctx, pc.sc.Conn()); err != nil {
		return fmt.Errorf("tenantpg: ping tenant %q: %w", t, err)
	}
	return nil
}

// ping pings conn as stdlib.Conn.Ping does, but never closes stdlib's
// wrapper: stdlib closes it on any failure, which for a pool connection
// releases it to pgxpool while tenantpg still holds it, and park would then
// park it too: two holders of one session. Here park decides alone (it
// gives pgxpool a connection the failure closed or left busy). A failure
// that left the connection open and idle (ctx ended before anything was
// sent) returns ctx's error rather than driver.ErrBadConn: the connection
// is fine.
func ping(ctx context.Context, conn *pgx.Conn) error {
	if conn.IsClosed() {
		return driver.ErrBadConn
	}
	if err := conn.Ping(ctx); err != nil {
		if conn.IsClosed() {
			return driver.ErrBadConn
		}
		return err
	}
	return nil
}

// CheckNamedValue accepts every argument, as pgx's stdlib does: pgx
// encodes driver.Valuer, sql.Scanner-compatible and native types itself.
func (h *Conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func (h *Conn) Prepare(query string) (driver.Stmt, error) {
	return h.PrepareContext(context.Background(), query)
}

// PrepareContext checks query on the checkout's connection (one Parse and
// Describe of an unnamed statement, which transaction poolers pass) and
// returns a statement that runs query on whichever connection a later
// checkout of the handle has, as ExecContext and QueryContext do: in that
// connection's default_query_exec_mode, so with cache_statement it stays
// prepared per connection (statements.go), and with exec or simple_protocol it works
// through PgBouncer and Supavisor. It returns query's error from the
// server, or the checkout's (ErrNoTenant, a *BudgetError, ...).
func (h *Conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	sc, err := h.bound(ctx)
	if err != nil {
		return nil, err
	}
	pc := sc.Conn()
	if pc.IsClosed() {
		return nil, driver.ErrBadConn
	}
	var sd *pgconn.StatementDescription
	if query == "" {
		// pgx's Prepare takes name == sql to mean "name it after the SQL"
		// and would leave a named statement on the server.
		sd, err = pc.PgConn().Prepare(h.pgxCtx(ctx, nil), "", query, nil)
	} else {
		sd, err = pc.Prepare(h.pgxCtx(ctx, nil), "", query)
	}
	if err != nil {
		return nil, err
	}
	return &stmt{h: h, query: query, n: len(sd.ParamOIDs)}, nil
}

func (h *Conn) Begin() (driver.Tx, error) {
	return h.BeginTx(context.Background(), driver.TxOptions{})
}

func (h *Conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	sc, err := h.bound(ctx)
	if err != nil {
		return nil, err
	}
	return sc.BeginTx(h.pgxCtx(ctx, nil), opts)
}

// ExecContext runs query on the checkout's connection as stdlib.Conn's
// ExecContext does (with arguments, on pgconn: statements.go), except for
// the error of an exec that sent nothing: it is driver.ErrBadConn only
// when the connection is closed (see retryable).
func (h *Conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	sc, err := h.bound(ctx)
	if err != nil {
		return nil, err
	}
	conn := sc.Conn()
	if conn.IsClosed() {
		return nil, driver.ErrBadConn
	}
	a := make([]any, len(args))
	for i, v := range args {
		a[i] = v.Value
	}
	var tag pgconn.CommandTag
	// Without arguments pgx sends the simple protocol, which runs
	// several statements in one string: keep that.
	if st := h.pc.st; len(args) > 0 && st.runs(query, args) {
		tag, err = st.exec(h.pgxCtx(ctx, args), conn, query, a)
	} else {
		tag, err = conn.Exec(h.pgxCtx(ctx, args), query, a...)
	}
	if err != nil {
		return nil, retryable(conn, err)
	}
	return driver.RowsAffected(tag.RowsAffected()), nil
}

// retryable returns the error database/sql gets for an operation on conn
// that failed with err: driver.ErrBadConn, which makes database/sql retry on
// another connection (and close a *sql.Conn's), when nothing was sent and
// the connection is closed; err itself otherwise. pgx stdlib returns
// ErrBadConn whenever nothing was sent, also when the connection is fine:
// "conn busy" (a *sql.Conn used while its rows are open) and a context that
// had ended, which then closed the caller's *sql.Conn and hid the reason.
func retryable(conn *pgx.Conn, err error) error {
	if pgconn.SafeToRetry(err) && conn.IsClosed() {
		return driver.ErrBadConn
	}
	return err
}

func (h *Conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if _, err := h.bound(ctx); err != nil {
		return nil, err
	}
	return h.pc.query(h.pgxCtx(ctx, args), query, args)
}

// stmt is a statement prepared through a handle. database/sql keeps it with
// the handle across checkouts and tenants; it holds no server-side state,
// so each execution runs its query on the connection of the checkout that
// uses it, never on one the handle no longer holds, and a release has
// nothing to deallocate.
type stmt struct {
	h     *Conn
	query string
	n     int // parameters, from PrepareContext's Describe
}

var (
	_ driver.Stmt             = (*stmt)(nil)
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

// Close has nothing to release: the statement lives on no connection.
func (s *stmt) Close() error { return nil }

func (s *stmt) NumInput() int { return s.n }

func (s *stmt) Exec([]driver.Value) (driver.Result, error) {
	return nil, errors.New("tenantpg: Stmt.Exec is deprecated; database/sql uses ExecContext")
}

func (s *stmt) Query([]driver.Value) (driver.Rows, error) {
	return nil, errors.New("tenantpg: Stmt.Query is deprecated; database/sql uses QueryContext")
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.h.ExecContext(ctx, s.query, args)
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.h.QueryContext(ctx, s.query, args)
}
