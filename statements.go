package tenantpg

import (
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// database/sql's queries and execs run on pgconn, below pgx.Conn, when the
// connection's default exec mode is cache_statement or exec and it has no
// tracer: the same protocol messages, argument encoding (pgx's
// ExtendedQueryBuilder) and result formats as pgx stdlib, without what
// pgx.Conn.Query does around them for features database/sql cannot reach
// (query options, rewriters, tracers, its rows type): about 5% of the
// client's CPU per query (docs/architecture.md, "Statements"). In
// cache_statement mode that needs a statement cache of tenantpg's own, with
// pgx's policy: one named prepared statement per SQL text and connection,
// at most StatementCacheCapacity of them (least recently used ones are
// deallocated), and a statement whose execution fails is deallocated and
// prepared again on its next use.

// stateKey is the key of a connection's connState in its PgConn's
// CustomData.
const stateKey = "github.com/tenantpg/tenantpg"

// connState is what tenantpg keeps with a pgx connection for its life.
// Only the connection's holder uses it, as only the holder uses the
// connection.
type connState struct {
	// fast: database/sql operations run on pgconn (see above); set when
	// the connection is made, from its config.
	fast bool
	// bare: the connection has no query tracer (queriesUntraced), per
	// connection because a BeforeConnect hook may set one.
	bare bool
	mode pgx.QueryExecMode // the connection's default exec mode
	max  int               // statement cache capacity

	eqb pgx.ExtendedQueryBuilder

	// scan: the scan plans of the tenantpg checkout holding the
	// connection (rows.go); a new pconn starts without.
	scan *scanCache

	// names are the names pgx.Conn.Prepare was given on this connection
	// (seen by namedStatements), but for pgx's own statement cache's.
	// pgx runs a query whose text is such a name as that prepared
	// statement, so such queries go through pgx. Deallocating one is not
	// traced: its name stays (and its text goes through pgx, which is
	// always right). Beyond maxNames the connection stops running
	// queries itself.
	names     map[string]struct{}
	preparing string // the name of the pgx.Conn.Prepare under way

	stmts      map[string]*cachedStmt // by SQL text
	head, tail *cachedStmt            // most and least recently used
	stale      []string               // statements to deallocate before the next execution

	// unsure: code other than tenantpg's database/sql path may have used
	// the connection since (inside Raw, pgx-native code, the user's pool
	// hooks, SQL with the word DISCARD or DEALLOCATE) and deallocated
	// every statement (pgx.Conn.DeallocateAll, DISCARD ALL), which
	// tenantpg cannot see. Outside a transaction a statement found missing
	// is prepared and sent again (rows.send, exec); inside one that would
	// abort it, so the first statement sent in a transaction while unsure
	// empties the cache first (beginning).
	unsure bool
	// ownRelease: tenantpg is giving the connection back to pgxpool
	// (releaseTracer.TraceRelease marks every other release unsure).
	ownRelease bool
}

// cachedStmt is a statement tenantpg prepared on a connection.
type cachedStmt struct {
	sd         *pgconn.StatementDescription
	formats    []int16 // result formats: pgx stdlib's by type OID
	prev, next *cachedStmt
	resets     bool // the statement may deallocate statements (DISCARD, DEALLOCATE): see unsure
}

// stateOf returns conn's connState, made on first use.
func stateOf(conn *pgx.Conn) *connState {
	cd := conn.PgConn().CustomData()
	if st, ok := cd[stateKey].(*connState); ok {
		return st
	}
	cfg := conn.Config()
	// BeforeConnect gives namedStatements exactly to the connections that
	// can send queries themselves (sendsItself).
	_, watched := cfg.Tracer.(namedStatements)
	st := &connState{fast: watched, bare: queriesUntraced(cfg.Tracer), mode: cfg.DefaultQueryExecMode, max: cfg.StatementCacheCapacity}
	cd[stateKey] = st
	return st
}

// sendsItself reports whether tenantpg can send database/sql's queries on
// a connection with config cc itself: it has no tracer (a user's sees
// every query), and its mode is exec, or cache_statement with a statement
// cache.
func sendsItself(cc *pgx.ConnConfig) bool {
	m := cc.DefaultQueryExecMode
	return cc.Tracer == nil && (m == pgx.QueryExecModeExec || m == pgx.QueryExecModeCacheStatement && cc.StatementCacheCapacity > 0)
}

// runs reports whether tenantpg runs query with args itself: the
// connection allows it, query is not empty (pgx sends an empty query by
// the simple protocol), is no name of a statement pgx prepared, and args
// hold no pgx query options (exec mode, result formats, rewriters such as
// pgx.NamedArgs).
func (st *connState) runs(query string, args []driver.NamedValue) bool {
	if !st.fast || query == "" {
		return false
	}
	if len(st.names) > 0 {
		if _, ok := st.names[query]; ok {
			return false
		}
	}
	for _, a := range args {
		switch a.Value.(type) {
		case pgx.QueryRewriter, pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			return false
		}
	}
	return true
}

// send sends query with args as pgx.Conn.Query (forQuery) or Exec would in
// the connection's mode and returns the result to read, and the cached
// statement it executed (nil in exec mode). It returns an error when
// nothing was sent: stale statements could not be deallocated, query could
// not be prepared or args encoded; as pgx does, a cached statement whose
// arguments did not fit is dropped (a migration may have changed its
// parameters' types).
func (st *connState) send(ctx context.Context, pgc *pgconn.PgConn, m *pgtype.Map, query string, args []any, forQuery bool) (*pgconn.ResultReader, *cachedStmt, error) {
	if len(st.stale) > 0 {
		if err := st.deallocate(ctx, pgc); err != nil {
			return nil, nil, err
		}
	}
	if st.mode == pgx.QueryExecModeExec {
		if err := st.eqb.Build(m, nil, args); err != nil {
			return nil, nil, err
		}
		rr := pgc.ExecParams(ctx, query, st.eqb.ParamValues, nil, st.eqb.ParamFormats, st.eqb.ResultFormats)
		st.sent()
		return rr, nil, nil
	}
	cs, err := st.statement(ctx, pgc, query)
	if err != nil {
		return nil, nil, err
	}
	if forQuery && len(cs.sd.ParamOIDs) != len(args) {
		st.drop(cs)
		return nil, nil, fmt.Errorf("expected %d arguments, got %d", len(cs.sd.ParamOIDs), len(args))
	}
	if err := st.eqb.Build(m, cs.sd, args); err != nil {
		st.drop(cs)
		return nil, nil, err
	}
	formats := cs.formats
	if !forQuery {
		formats = st.eqb.ResultFormats // what pgx's Exec sends, for rows it discards
	}
	rr := pgc.ExecStatement(ctx, cs.sd, st.eqb.ParamValues, st.eqb.ParamFormats, formats)
	st.sent()
	if cs.resets {
		st.markUnsure()
	}
	return rr, cs, nil
}

// start sends query with args through send and reads the result up to its
// first row into res. Inside a transaction an unsure cache is emptied
// first (beginning). Outside one, a cached statement that code outside
// tenantpg deallocated did nothing (its Bind failed): it is prepared and
// sent again, once; pgx's own cache would not have failed there
// (pgx.Conn.DeallocateAll empties it). unsent is send's error (nothing
// was sent), err the first row's.
func (st *connState) start(ctx context.Context, pgc *pgconn.PgConn, m *pgtype.Map, query string, args []any, forQuery bool, res *result) (more bool, unsent, err error) {
	for retry := true; ; retry = false {
		idle := pgc.TxStatus() == 'I'
		if !idle {
			st.beginning()
		}
		rr, cs, err := st.send(ctx, pgc, m, query, args, forQuery)
		if err != nil {
			return false, err, nil
		}
		*res = result{rr: rr, st: st, cs: cs}
		more := res.Next()
		if err := res.Err(); err != nil {
			if retry && idle && missing(cs, err) {
				continue
			}
			return false, nil, err
		}
		return more, nil, nil
	}
}

// exec runs query with args through start and returns its command tag.
func (st *connState) exec(ctx context.Context, conn *pgx.Conn, query string, args []any) (pgconn.CommandTag, error) {
	var res result
	if _, unsent, _ := st.start(ctx, conn.PgConn(), conn.TypeMap(), query, args, false, &res); unsent != nil {
		return pgconn.CommandTag{}, unsent
	}
	res.Close() // a no-op when the first row's read failed: res.err has it
	return res.tag, res.err
}

// sent lets the encoded arguments of a query go once it is sent, as pgx
// does, when they are large; small ones keep their buffers for the next.
func (st *connState) sent() {
	n := 0
	for _, v := range st.eqb.ParamValues {
		n += len(v)
	}
	if n > 256 || cap(st.eqb.ParamValues) > 64 {
		st.eqb = pgx.ExtendedQueryBuilder{}
	}
}

// statement returns the cached statement for query, preparing it on a
// miss.
func (st *connState) statement(ctx context.Context, pgc *pgconn.PgConn, query string) (*cachedStmt, error) {
	if cs := st.stmts[query]; cs != nil {
		st.unlink(cs)
		st.push(cs)
		return cs, nil
	}
	name := statementName(query)
	sd, err := pgc.Prepare(ctx, name, query, nil)
	if err != nil {
		var pe *pgconn.PrepareError
		if errors.As(err, &pe) && pe.ParseComplete {
			st.stale = append(st.stale, name) // parsed, then failed: the server keeps it
		}
		return nil, err
	}
	cs := &cachedStmt{sd: sd, formats: make([]int16, len(sd.Fields)), resets: deallocates(query)}
	for i, f := range sd.Fields {
		cs.formats[i] = resultFormats[f.DataTypeOID]
	}
	st.add(cs)
	return cs, nil
}

// add caches cs as the most recently used statement, and drops the least
// recently used beyond the capacity.
func (st *connState) add(cs *cachedStmt) {
	if st.stmts == nil {
		st.stmts = make(map[string]*cachedStmt)
	}
	st.stmts[cs.sd.SQL] = cs
	st.push(cs)
	for len(st.stmts) > st.max {
		st.drop(st.tail)
	}
}

// statementName names the statement tenantpg prepares for query: as pgx
// names its own, with a prefix of tenantpg's so that the two caches never
// share a name.
func statementName(query string) string {
	d := sha256.Sum256([]byte(query))
	return "tenantpg_" + hex.EncodeToString(d[:24])
}

// failed is called with the error of an execution of cs (nil in exec
// mode): as pgx does with its cache, a statement whose execution failed
// is deallocated and prepared again on its next use (the error may be
// that its plan no longer fits the schema). When cs was missing on the
// server, something deallocated every statement (pgx.Conn.DeallocateAll,
// DEALLOCATE ALL, DISCARD ALL): they are all dropped, so that only this
// execution fails (Close of a statement that does not exist succeeds).
func (st *connState) failed(cs *cachedStmt, err error) {
	if cs == nil || err == nil || st.stmts[cs.sd.SQL] != cs {
		return
	}
	if !missing(cs, err) {
		st.drop(cs)
		return
	}
	st.unsure = false
	st.dropAll()
}

// drop removes cs from the cache; it is deallocated before the next
// execution.
func (st *connState) drop(cs *cachedStmt) {
	st.unlink(cs)
	delete(st.stmts, cs.sd.SQL)
	st.stale = append(st.stale, cs.sd.Name)
}

// deallocate deallocates stale statements, as pgx does its own: in one
// round trip, and only outside a failed transaction (the server would
// refuse).
func (st *connState) deallocate(ctx context.Context, pgc *pgconn.PgConn) error {
	if s := pgc.TxStatus(); s != 'I' && s != 'T' {
		return nil
	}
	p := pgc.StartPipeline(ctx)
	for _, name := range st.stale {
		p.SendDeallocate(name)
	}
	err := p.Sync()
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("failed to deallocate cached statement(s): %w", err) // pgx's words for its own
	}
	clear(st.stale)
	st.stale = st.stale[:0]
	return nil
}

// touched marks conn's cache unsure: code outside tenantpg's database/sql
// path holds the connection.
func touched(conn *pgx.Conn) { stateOf(conn).markUnsure() }

// markUnsure marks the cache unsure (see unsure); only a connection that
// sends queries itself has one.
func (st *connState) markUnsure() { st.unsure = st.fast }

// beginning is called before a statement is sent inside a transaction:
// when the cache is unsure, every cached statement is dropped (to be
// deallocated and prepared again on its next use).
func (st *connState) beginning() {
	if st.unsure {
		st.unsure = false
		st.dropAll()
	}
}

// dropAll drops every cached statement.
func (st *connState) dropAll() {
	for st.tail != nil {
		st.drop(st.tail)
	}
}

// missing reports whether err says that cs is not prepared on the server:
// code outside tenantpg deallocated it (DEALLOCATE ALL, DISCARD ALL,
// pgx.Conn.DeallocateAll). The execution then did nothing.
func missing(cs *cachedStmt, err error) bool {
	var pe *pgconn.PgError
	return cs != nil && errors.As(err, &pe) && pe.Code == "26000" && strings.Contains(pe.Message, cs.sd.Name)
}

func (st *connState) push(cs *cachedStmt) {
	cs.prev, cs.next = nil, st.head
	if st.head != nil {
		st.head.prev = cs
	}
	st.head = cs
	if st.tail == nil {
		st.tail = cs
	}
}

func (st *connState) unlink(cs *cachedStmt) {
	if cs.prev != nil {
		cs.prev.next = cs.next
	} else {
		st.head = cs.next
	}
	if cs.next != nil {
		cs.next.prev = cs.prev
	} else {
		st.tail = cs.prev
	}
	cs.prev, cs.next = nil, nil
}

// namedStatements is the tracer of connections that have none: it records
// the names pgx.Conn.Prepare is given (by the user's hooks, or code inside
// Raw or on Pool's connections), because pgx runs a query whose text is
// such a name as that prepared statement (see connState.names). It traces
// nothing else.
type namedStatements struct{}

var (
	_ pgx.QueryTracer   = namedStatements{}
	_ pgx.PrepareTracer = namedStatements{}
)

// TraceQueryStart sees the queries pgx runs (not tenantpg's own): one that
// may deallocate statements makes the cache unsure.
func (namedStatements) TraceQueryStart(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if deallocates(d.SQL) {
		touched(c)
	}
	return ctx
}

// deallocates reports whether sql has the word DISCARD or DEALLOCATE, in
// any case (not as part of a name such as discarded_at).
func deallocates(sql string) bool {
	for i := 0; i < len(sql); i++ {
		if sql[i]|0x20 != 'd' || i > 0 && wordByte(sql[i-1]) {
			continue
		}
		for _, w := range [...]string{"discard", "deallocate"} {
			end := i + len(w)
			if end <= len(sql) && strings.EqualFold(sql[i:end], w) && (end == len(sql) || !wordByte(sql[end])) {
				return true
			}
		}
	}
	return false
}

// wordByte reports whether b can be part of an SQL identifier.
func wordByte(b byte) bool {
	return b == '_' || b == '$' || b >= 0x80 || '0' <= b && b <= '9' || 'a' <= b|0x20 && b|0x20 <= 'z'
}

func (namedStatements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (namedStatements) TracePrepareStart(ctx context.Context, c *pgx.Conn, d pgx.TracePrepareStartData) context.Context {
	// pgx names its statement cache's statements stmtcache_<digest>.
	if d.Name != "" && !strings.HasPrefix(d.Name, "stmtcache_") {
		stateOf(c).preparing = d.Name
	}
	return ctx
}

func (namedStatements) TracePrepareEnd(_ context.Context, c *pgx.Conn, d pgx.TracePrepareEndData) {
	st := stateOf(c)
	name := st.preparing
	if name == "" {
		return
	}
	st.preparing = ""
	if d.Err != nil {
		return
	}
	if st.names == nil {
		st.names = make(map[string]struct{})
	}
	st.names[name] = struct{}{}
	if len(st.names) > maxNames {
		st.fast = false // names made per use: let pgx run everything, and forget them
		st.names = nil
	}
}

// maxNames bounds connState.names.
const maxNames = 1024
