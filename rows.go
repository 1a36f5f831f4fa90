package tenantpg

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Queries return tenantpg's own driver.Rows instead of pgx stdlib's. The
// values database/sql gets are stdlib's, column type by column type (the
// same result formats, scan plans and Go types: see valueKind), and the
// column metadata is stdlib's. What differs is the cost: stdlib plans each
// column's scan again for every query (Map.PlanScan, a closure and a target
// per column, a slice of them), about 4.6% of the client's CPU per
// QueryRow; tenantpg keeps the plans with the connection it holds
// (scanCache) and the query's arguments inside the rows, 4 allocations
// fewer per query (see docs/architecture.md, "Rows").

// resultFormats is pgx stdlib's databaseSQLResultFormats (unexported
// there): binary results for the intrinsic types database/sql handles,
// text for everything else.
var resultFormats = pgx.QueryResultFormatsByOID{
	pgtype.BoolOID:        pgtype.BinaryFormatCode,
	pgtype.ByteaOID:       pgtype.BinaryFormatCode,
	pgtype.CIDOID:         pgtype.BinaryFormatCode,
	pgtype.DateOID:        pgtype.BinaryFormatCode,
	pgtype.Float4OID:      pgtype.BinaryFormatCode,
	pgtype.Float8OID:      pgtype.BinaryFormatCode,
	pgtype.Int2OID:        pgtype.BinaryFormatCode,
	pgtype.Int4OID:        pgtype.BinaryFormatCode,
	pgtype.Int8OID:        pgtype.BinaryFormatCode,
	pgtype.OIDOID:         pgtype.BinaryFormatCode,
	pgtype.TimestampOID:   pgtype.BinaryFormatCode,
	pgtype.TimestamptzOID: pgtype.BinaryFormatCode,
	pgtype.XIDOID:         pgtype.BinaryFormatCode,
}

// valueKind is the Go type a column is scanned into and the driver.Value
// database/sql gets for it, chosen by the column's type OID exactly as
// stdlib.Rows does (initValueFuncs): int2/int4/int8 give int64,
// float4/float8 float64, bool bool, bytea/json/jsonb/xml []byte,
// cid/oid/xid, date and the timestamps their pgtype's Value, everything
// else string.
type valueKind uint8

const (
	kindString valueKind = iota
	kindBool
	kindBytes
	kindUint32
	kindDate
	kindFloat4
	kindFloat8
	kindInt2
	kindInt4
	kindInt8
	kindTimestamp
	kindTimestamptz
)

func kindOf(oid uint32) valueKind {
	switch oid {
	case pgtype.BoolOID:
		return kindBool
	case pgtype.ByteaOID, pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
		return kindBytes
	case pgtype.CIDOID, pgtype.OIDOID, pgtype.XIDOID:
		return kindUint32
	case pgtype.DateOID:
		return kindDate
	case pgtype.Float4OID:
		return kindFloat4
	case pgtype.Float8OID:
		return kindFloat8
	case pgtype.Int2OID:
		return kindInt2
	case pgtype.Int4OID:
		return kindInt4
	case pgtype.Int8OID:
		return kindInt8
	case pgtype.TimestampOID:
		return kindTimestamp
	case pgtype.TimestamptzOID:
		return kindTimestamptz
	default:
		return kindString
	}
}

// scanCache keeps the scan plans of a connection tenantpg holds (one
// pconn), for up to scanPlans column types and formats, and one scan target
// per valueKind. A plan depends on the types the connection's type map
// registers, which only its holder changes: user hooks when pgxpool
// connects or hands it out (before a pconn exists), pgx-native code on a
// connection of Pool (while tenantpg does not hold it; a new pconn starts a
// new cache), and code inside (*sql.Conn).Raw, for which Conn and
// ConnContext drop the cache. (A query tracer or pgx.QueryRewriter also
// gets the *pgx.Conn, during a query; types registered from there are not
// seen by plans already cached: register types in AfterConnect.) Only the
// checkout's holder touches it: database/sql never uses a driver
// connection from two goroutines at once, and a pgx connection runs one
// query at a time.
type scanCache struct {
	keys  [scanPlans]uint64 // planKey of plans[i]; 0 for none
	plans [scanPlans]scanPlan
	next  uint8 // the entry the next new plan takes: round robin, so the oldest once all are in use

	// Targets. A plan scans into one and the value is copied out at once,
	// as stdlib's per-query closures do with theirs; every plan of pgx's
	// built-in codecs for a []byte or a string allocates a new one, so a
	// value handed out earlier never shares memory with a later one, and
	// value clears those two so that the cache does not keep the last one
	// alive.
	b    bool
	by   []byte
	u32  pgtype.Uint32
	date pgtype.Date
	f4   float32
	f8   float64
	i2   int16
	i4   int32
	i8   int64
	ts   pgtype.Timestamp
	tstz pgtype.Timestamptz
	s    string
}

// scanPlans is how many column types and formats a connection keeps plans
// for; more in use at once are planned again (what stdlib does for every
// query) when they come round.
const scanPlans = 16

// scanPlan is the plan for one column type and format.
type scanPlan struct {
	plan pgtype.ScanPlan
	kind valueKind
}

// planKey identifies a column type and format; never 0.
func planKey(oid uint32, format int16) uint64 {
	return 1<<48 | uint64(oid)<<16 | uint64(uint16(format))
}

// planFor returns the plan for a column of type oid in format, made with m
// when the cache has none.
func (c *scanCache) planFor(m *pgtype.Map, oid uint32, format int16) scanPlan {
	k := planKey(oid, format)
	for i, key := range c.keys {
		if key == k {
			return c.plans[i]
		}
	}
	kind := kindOf(oid)
	p := scanPlan{kind: kind, plan: m.PlanScan(oid, format, c.target(kind))}
	i := c.next % scanPlans
	c.keys[i], c.plans[i] = k, p
	c.next++
	return p
}

func (c *scanCache) target(k valueKind) any {
	switch k {
	case kindBool:
		return &c.b
	case kindBytes:
		return &c.by
	case kindUint32:
		return &c.u32
	case kindDate:
		return &c.date
	case kindFloat4:
		return &c.f4
	case kindFloat8:
		return &c.f8
	case kindInt2:
		return &c.i2
	case kindInt4:
		return &c.i4
	case kindInt8:
		return &c.i8
	case kindTimestamp:
		return &c.ts
	case kindTimestamptz:
		return &c.tstz
	default:
		return &c.s
	}
}

// value scans src (not NULL) with p and returns what stdlib's value
// function for the column's type returns.
func (c *scanCache) value(p *scanPlan, src []byte) (driver.Value, error) {
	if err := p.plan.Scan(src, c.target(p.kind)); err != nil {
		return nil, err
	}
	switch p.kind {
	case kindBool:
		return c.b, nil
	case kindBytes:
		v := c.by
		c.by = nil // the connection must not keep the last value alive
		return v, nil
	case kindUint32:
		return c.u32.Value()
	case kindDate:
		return c.date.Value()
	case kindFloat4:
		return float64(c.f4), nil
	case kindFloat8:
		return c.f8, nil
	case kindInt2:
		return int64(c.i2), nil
	case kindInt4:
		return int64(c.i4), nil
	case kindInt8:
		return c.i8, nil
	case kindTimestamp:
		return c.ts.Value()
	case kindTimestamptz:
		return c.tstz.Value()
	default:
		v := c.s
		c.s = ""
		return v, nil
	}
}

// rows is the driver.Rows of a query: pgx's rows, or pgconn's result when
// tenantpg sent the query itself (statements.go), with the first row read
// already (database/sql asks for the columns before the first Next, and
// pgx knows them only once the result has started).
type rows struct {
	rows  source
	m     *pgtype.Map
	pc    *pconn     // whose scan plans the rows take (plan)
	cache *scanCache // pc's cache as of then: its targets, even if Raw drops it from pc
	plans []scanPlan // per column, from plan on

	skipNext bool // the first row is read and not yet returned
	more     bool // whether there was a first row

	res result // rows when tenantpg sent the query

	// Room for a query's arguments (with resultFormats first when pgx runs
	// the query): pgx keeps them with its rows, so they live as long as
	// these; send clears them once sent.
	args   [4]any
	inline [4]scanPlan
}

// source is what rows read: pgx.Rows, or a result.
type source interface {
	Next() bool
	Err() error
	Close()
	FieldDescriptions() []pgconn.FieldDescription
	RawValues() [][]byte
}

// result reads pgconn's result of a query tenantpg sent, as pgx's rows
// read theirs; an error of the execution drops the statement from the
// connection's cache (connState.failed).
type result struct {
	rr     *pgconn.ResultReader
	st     *connState
	cs     *cachedStmt
	tag    pgconn.CommandTag // from Close on
	err    error
	closed bool
}

var _ source = (*result)(nil)

func (r *result) Next() bool {
	if r.closed {
		return false
	}
	if r.rr.NextRow() {
		return true
	}
	r.Close()
	return false
}

func (r *result) Err() error { return r.err }

func (r *result) Close() {
	if r.closed {
		return
	}
	r.closed = true
	r.tag, r.err = r.rr.Close()
	r.st.failed(r.cs, r.err)
}

func (r *result) FieldDescriptions() []pgconn.FieldDescription { return r.rr.FieldDescriptions() }

func (r *result) RawValues() [][]byte { return r.rr.Values() }

var (
	_ driver.Rows                           = (*rows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeLength           = (*rows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
)

// query runs query on the checkout's connection as stdlib.Conn's
// QueryContext does, and returns its rows: driver.ErrBadConn when the
// connection is closed, before or by a failure that sent nothing (so
// database/sql retries on another connection), the query's error otherwise
// (see retryable).
func (pc *pconn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	conn := pc.sc.Conn()
	if conn.IsClosed() {
		return nil, driver.ErrBadConn
	}
	r := &rows{m: conn.TypeMap(), pc: pc}
	st := pc.st
	fast := st.runs(query, args)
	a := r.args[:]
	n := len(args)
	if !fast {
		n++ // resultFormats first
	}
	if n <= len(a) {
		a = a[:n]
	} else {
		a = make([]any, n)
	}
	if fast {
		for i, v := range args {
			a[i] = v.Value
		}
		return r.send(ctx, conn, st, query, a)
	}
	a[0] = resultFormats
	for i, v := range args {
		a[i+1] = v.Value
	}
	pr, err := conn.Query(ctx, query, a...)
	if err != nil {
		return nil, retryable(conn, err)
	}
	more := pr.Next()
	if err := pr.Err(); err != nil {
		pr.Close()
		return nil, err
	}
	r.rows, r.skipNext, r.more = pr, true, more
	return r, nil
}

// send runs query with args through st (connState.start) and reads the
// first row.
func (r *rows) send(ctx context.Context, conn *pgx.Conn, st *connState, query string, args []any) (driver.Rows, error) {
	defer clear(r.args[:]) // sent: the rows need not keep them alive
	more, unsent, err := st.start(ctx, conn.PgConn(), r.m, query, args, true, &r.res)
	if unsent != nil {
		return nil, retryable(conn, unsent)
	}
	if err != nil {
		return nil, err // as stdlib returns the first row's error
	}
	r.rows, r.skipNext, r.more = &r.res, true, more
	return r, nil
}

// Columns returns the result's column names.
func (r *rows) Columns() []string {
	fields := r.rows.FieldDescriptions()
	names := make([]string, len(fields))
	for i, fd := range fields {
		names[i] = fd.Name
	}
	return names
}

// Close closes the result and returns the query's error, if any.
func (r *rows) Close() error {
	r.rows.Close()
	return r.rows.Err()
}

// advance moves to the next row; io.EOF after the last.
func (r *rows) advance() error {
	var more bool
	if r.skipNext {
		more = r.more
		r.skipNext = false
	} else {
		more = r.rows.Next()
	}
	if !more {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	return nil
}

// plan takes the rows' scan plans, once, from the connection's cache as it
// is then, at the points stdlib plans: the first Next, or (Go 1.27) the
// first non-NULL value scanned through database/sql's conversions. Code
// inside Raw may have registered a type and dropped the cache before.
func (r *rows) plan() {
	if r.plans != nil {
		return
	}
	if r.pc.st.scan == nil {
		r.pc.st.scan = new(scanCache)
	}
	r.cache = r.pc.st.scan
	fds := r.rows.FieldDescriptions()
	r.plans = r.inline[:0]
	if len(fds) > len(r.inline) {
		r.plans = make([]scanPlan, 0, len(fds))
	}
	for _, fd := range fds {
		r.plans = append(r.plans, r.cache.planFor(r.m, fd.DataTypeOID, fd.Format))
	}
}

// columnValue returns the value of column i of the current row, whose raw
// bytes are src (not NULL).
func (r *rows) columnValue(i int, src []byte) (driver.Value, error) {
	r.plan()
	return r.cache.value(&r.plans[i], src)
}

// Next fills dest with the next row's values; io.EOF after the last row.
func (r *rows) Next(dest []driver.Value) error {
	r.plan()
	if err := r.advance(); err != nil {
		return err
	}
	for i, src := range r.rows.RawValues() {
		if src == nil {
			dest[i] = nil
			continue
		}
		v, err := r.columnValue(i, src)
		if err != nil {
			return fmt.Errorf("convert field %d failed: %w", i, err)
		}
		dest[i] = v
	}
	return nil
}

// The column metadata below is stdlib.Rows's.

// ColumnTypeDatabaseTypeName returns the upper-case name of the column's
// type, or its OID when the connection's type map does not know it.
func (r *rows) ColumnTypeDatabaseTypeName(index int) string {
	oid := r.rows.FieldDescriptions()[index].DataTypeOID
	if dt, ok := r.m.TypeForOID(oid); ok {
		return strings.ToUpper(dt.Name)
	}
	return strconv.FormatInt(int64(oid), 10)
}

// varHeaderSize is what PostgreSQL adds to a varchar's declared length in
// the type modifier.
const varHeaderSize = 4

// ColumnTypeLength returns the length of variable-length columns: text and
// bytea unbounded, varchar and bpchar their declared length, varbit its
// bits.
func (r *rows) ColumnTypeLength(index int) (int64, bool) {
	fd := r.rows.FieldDescriptions()[index]
	switch fd.DataTypeOID {
	case pgtype.TextOID, pgtype.ByteaOID:
		return math.MaxInt64, true
	case pgtype.VarcharOID, pgtype.BPCharOID:
		return int64(fd.TypeModifier - varHeaderSize), true
	case pgtype.VarbitOID:
		return int64(fd.TypeModifier), true
	default:
		return 0, false
	}
}

// ColumnTypePrecisionScale returns a numeric column's precision and scale.
func (r *rows) ColumnTypePrecisionScale(index int) (precision, scale int64, ok bool) {
	fd := r.rows.FieldDescriptions()[index]
	if fd.DataTypeOID != pgtype.NumericOID {
		return 0, 0, false
	}
	mod := fd.TypeModifier - varHeaderSize
	return int64((mod >> 16) & 0xffff), int64(mod & 0xffff), true
}

// ColumnTypeScanType returns the Go type a column scans into.
func (r *rows) ColumnTypeScanType(index int) reflect.Type {
	switch r.rows.FieldDescriptions()[index].DataTypeOID {
	case pgtype.Float8OID:
		return reflect.TypeFor[float64]()
	case pgtype.Float4OID:
		return reflect.TypeFor[float32]()
	case pgtype.Int8OID:
		return reflect.TypeFor[int64]()
	case pgtype.Int4OID:
		return reflect.TypeFor[int32]()
	case pgtype.Int2OID:
		return reflect.TypeFor[int16]()
	case pgtype.BoolOID:
		return reflect.TypeFor[bool]()
	case pgtype.NumericOID:
		return reflect.TypeFor[float64]()
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return reflect.TypeFor[time.Time]()
	case pgtype.ByteaOID:
		return reflect.TypeFor[[]byte]()
	default:
		return reflect.TypeFor[string]()
	}
}
