package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// tenantpg returns its own driver.Rows, which keeps scan plans per
// connection, instead of pgx stdlib's. These tests hold it to stdlib's
// results: the same query on the same server through stdlib.OpenDB and
// through tenantpg must give database/sql the same values, the same errors
// and the same column metadata.

// rowsExprs covers every type stdlib.Rows converts specially (bool, bytea,
// cid/oid/xid, date, float4/8, int2/4/8, json/jsonb, timestamp/tz, xml),
// their infinities and NULLs, and types it hands over as text.
var rowsExprs = []string{
	"true", "false", "null::bool",
	`'\xdeadbeef00'::bytea`, `''::bytea`, "null::bytea",
	"'7'::cid", "42::oid", "'123'::xid",
	"date '2024-02-29'", "'infinity'::date", "'-infinity'::date", "null::date",
	"1.5::float4", "'Infinity'::float4", "2.25::float8", "'NaN'::float8", "-0.0::float8",
	"32767::int2", "(-5)::int4", "9223372036854775807::int8", "null::int8",
	`'{"a": 1}'::json`, `'{"b": [1, 2]}'::jsonb`, "null::jsonb",
	"timestamp '2024-01-02 03:04:05.123456'", "'infinity'::timestamp", "'-infinity'::timestamp",
	"timestamptz '2024-01-02 03:04:05.123456+02'", "'-infinity'::timestamptz", "null::timestamptz",
	"'<a>1</a>'::xml",
	"'héllo'::text", "''::text", "'x'::varchar(10)", "'y'::char(3)", "'n'::name", `'q'::"char"`,
	"12.345::numeric(10,3)", "'NaN'::numeric", "'550e8400-e29b-41d4-a716-446655440000'::uuid",
	"interval '1 day 02:00'", "time '12:34:56'", "timetz '12:34:56+01'",
	"array[1, 2, 3]::int4[]", "'{a,NULL}'::text[]", "'10.0.0.1/8'::inet", "'10.0.0.0/8'::cidr",
	"B'101'", "'1010'::varbit(8)", "point '(1,2)'", "'[1,5)'::int4range", "null::text",
}

// rowsDests are the destinations each expression is scanned into.
var rowsDests = []struct {
	name string
	new  func() any
}{
	{"any", func() any { return new(any) }},
	{"string", func() any { return new(string) }},
	{"NullString", func() any { return new(sql.NullString) }},
	{"bytes", func() any { return new([]byte) }},
	{"int64", func() any { return new(int64) }},
	{"float64", func() any { return new(float64) }},
	{"bool", func() any { return new(bool) }},
	{"Time", func() any { return new(time.Time) }},
	{"int32s", func() any { return new([]int32) }},
}

var rowsModes = []string{"cache_statement", "cache_describe", "exec", "simple_protocol"} // tenantpg refuses describe_exec

// rowsPair opens stdlib.OpenDB for tenant t01's login and tenantpg routing
// to it, both in exec mode mode, each kept to one connection so that a
// query's second run reads the plans its first run cached.
func rowsPair(t *testing.T, env *pgtest.Env, mode string) (std, tp *sql.Conn) {
	t.Helper()
	ctx := testCtx(t)
	cfg, err := pgx.ParseConfig(withParams(env.DirectURL("app.t01", env.AppDatabase), "default_query_exec_mode="+mode))
	if err != nil {
		t.Fatal(err)
	}
	sdb := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { sdb.Close() })
	tdb := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}", "default_query_exec_mode="+mode))
	if std, err = sdb.Conn(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { std.Close() })
	if tp, err = tdb.Conn(tenantpg.WithTenant(ctx, "t01")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return std, tp
}

// scanOne runs query and scans its only row's only column into dest; it
// returns what dest then holds, or the error as text.
func scanOne(ctx context.Context, c interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, query string, dest any) string {
	if err := c.QueryRowContext(ctx, query).Scan(dest); err != nil {
		return "error: " + err.Error()
	}
	v := reflect.ValueOf(dest).Elem().Interface()
	return fmt.Sprintf("%T %#v", v, v)
}

// columnTypes describes the column metadata database/sql reports for query.
func columnTypes(ctx context.Context, c *sql.Conn, query string) (string, error) {
	rs, err := c.QueryContext(ctx, query)
	if err != nil {
		return "", err
	}
	defer rs.Close()
	cts, err := rs.ColumnTypes()
	if err != nil {
		return "", err
	}
	var s string
	for _, ct := range cts {
		l, lok := ct.Length()
		p, sc, dok := ct.DecimalSize()
		n, nok := ct.Nullable()
		s += fmt.Sprintf("%s %s len=%d,%v dec=%d,%d,%v null=%v,%v scan=%v; ",
			ct.Name(), ct.DatabaseTypeName(), l, lok, p, sc, dok, n, nok, ct.ScanType())
	}
	return s, rs.Err()
}

func TestRowsMatchStdlib(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	for _, mode := range rowsModes {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			std, tp := rowsPair(t, env, mode)
			for _, expr := range rowsExprs {
				q := "select " + expr + " as v"
				want, err := columnTypes(ctx, std, q)
				if err != nil {
					t.Fatalf("%s: stdlib: %v", q, err)
				}
				if got, err := columnTypes(ctx, tp, q); err != nil || got != want {
					t.Errorf("%s: column types\n tenantpg %s (%v)\n stdlib   %s", q, got, err, want)
				}
				for _, d := range rowsDests {
					want := scanOne(ctx, std, q, d.new())
					for run := 1; run <= 2; run++ { // the second run from the cached plan
						if got := scanOne(ctx, tp, q, d.new()); got != want {
							t.Errorf("%s into %s, run %d:\n tenantpg %s\n stdlib   %s", q, d.name, run, got, want)
						}
					}
				}
			}
		})
	}
}

// TestRowsManyColumnsAndRows: more columns than the rows' inline room,
// several of one type (they share the connection's scan target), many
// rows, more column types in one row than a connection keeps plans for,
// and an error from the server in the middle of a result.
func TestRowsManyColumnsAndRows(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			std, tp := rowsPair(t, env, mode)
			q := `select g, g::int8 * 1000000000, g::text, g / 4.0::float8, g % 2 = 0, ('\x' || lpad(to_hex(g), 4, '0'))::bytea,
				date '2024-01-01' + g, case when g % 3 = 0 then null else g end, (g * 2)::text
				from generate_series(1, 300) g`
			want, werr := readAll(ctx, std, q)
			if werr != nil || len(want) != 300 {
				t.Fatalf("stdlib: %d rows, %v", len(want), werr)
			}
			for run := 1; run <= 2; run++ {
				got, err := readAll(ctx, tp, q)
				if err != nil || !sameRows(got, want) {
					t.Fatalf("run %d: tenantpg differs from stdlib (%v):\n%v\n%v", run, err, head(got), head(want))
				}
			}
			// Every expression in one row: more column types than a
			// connection keeps plans for, so the row's own plans evict
			// each other.
			q = "select " + strings.Join(rowsExprs, ", ")
			want, werr = readAll(ctx, std, q)
			if werr != nil || len(want) != 1 {
				t.Fatalf("stdlib: %d rows, %v", len(want), werr)
			}
			for run := 1; run <= 2; run++ {
				if got, err := readAll(ctx, tp, q); err != nil || !sameRows(got, want) {
					t.Fatalf("run %d: tenantpg differs from stdlib (%v):\n%#v\n%#v", run, err, got, want)
				}
			}
			// Division by zero at the fifth row: the rows before it, then the error.
			q = "select 10 / (5 - g), g::text from generate_series(1, 9) g"
			want, werr = readAll(ctx, std, q)
			got, err := readAll(ctx, tp, q)
			var pe *pgconn.PgError
			if !errors.As(werr, &pe) || pe.Code != "22012" {
				t.Fatalf("stdlib: %v, want division_by_zero", werr)
			}
			if fmt.Sprint(err) != fmt.Sprint(werr) || !sameRows(got, want) {
				t.Fatalf("tenantpg: %v then %v; stdlib: %v then %v", got, err, want, werr)
			}
		})
	}
}

// TestRowsArgumentsAndErrors: queries with arguments (NULL, more than the
// rows' inline room, pgx.NamedArgs, which pgx takes as a query rewriter)
// and queries that fail before their first row (syntax, argument count, an
// argument the server or pgx cannot take, an error computing the first
// row) give the same results and error texts as stdlib.
func TestRowsArgumentsAndErrors(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	cases := []struct {
		query string
		args  []any
	}{
		{"select $1::int8, $2::text, $3::bool", []any{int64(5), nil, true}},
		{"select $1::int4 + $2::int4 + $3::int4 + $4::int4 + $5::int4, $6::text", []any{1, 2, 3, 4, 5, "six"}},
		{"select @a::int4, @b::text", []any{pgx.NamedArgs{"a": 7, "b": "named"}}},
		{"select from where", nil},
		{"select $1::int4", []any{1, 2}},
		{"select $1::int4", []any{"not a number"}},
		{"select 1 / 0", nil},
		{"select * from no_such_table", nil},
	}
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			std, tp := rowsPair(t, env, mode)
			failures := 0
			for _, c := range cases {
				want, werr := readAll(ctx, std, c.query, c.args...)
				if werr != nil {
					failures++
				}
				for run := 1; run <= 2; run++ {
					got, err := readAll(ctx, tp, c.query, c.args...)
					if fmt.Sprint(err) != fmt.Sprint(werr) || !sameRows(got, want) {
						t.Errorf("%s %v, run %d: tenantpg %v, %v; stdlib %v, %v", c.query, c.args, run, got, err, want, werr)
					}
				}
			}
			if failures < 4 {
				t.Fatalf("only %d of the queries failed through stdlib: the error cases check nothing", failures)
			}
		})
	}
}

// readAll reads every row of query as []any, and the error that ended it.
func readAll(ctx context.Context, c *sql.Conn, query string, args ...any) ([][]any, error) {
	rs, err := c.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	cols, err := rs.Columns()
	if err != nil {
		return nil, err
	}
	var out [][]any
	for rs.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			return out, err
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

// sameRows compares results by their Go syntax, in which NaN equals NaN.
func sameRows(a, b [][]any) bool { return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b) }

func head(rows [][]any) [][]any { return rows[:min(3, len(rows))] }

// TestRowsFollowTypeRegistration: a type registered on a connection after
// tenantpg cached plans for it (here int4 decoded as int8) changes what
// tenantpg's rows do exactly as it changes stdlib's, whether registered
// inside (*sql.Conn).Raw or by pgx-native code on the tenant's Pool while
// tenantpg did not hold the connection.
func TestRowsFollowTypeRegistration(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	const q = "select 7::int4"
	int4AsInt8 := func(conn *pgx.Conn) {
		conn.TypeMap().RegisterType(&pgtype.Type{Name: "int4", OID: pgtype.Int4OID, Codec: pgtype.Int8Codec{}})
	}
	// rawInt4AsInt8 registers it on the connection behind c, of
	// stdlib.OpenDB or of tenantpg (through Conn; ConnContext is tested
	// below).
	rawInt4AsInt8 := func(c *sql.Conn) error {
		return c.Raw(func(dc any) error {
			if h, ok := dc.(*tenantpg.Conn); ok {
				int4AsInt8(h.Conn())
			} else {
				int4AsInt8(dc.(*stdlib.Conn).Conn())
			}
			return nil
		})
	}
	// want is what stdlib gives after the registration.
	want := func(t *testing.T) string {
		ctx := testCtx(t)
		std, _ := rowsPair(t, env, "cache_statement")
		before := scanOne(ctx, std, q, new(any))
		if err := rawInt4AsInt8(std); err != nil {
			t.Fatal(err)
		}
		after := scanOne(ctx, std, q, new(any))
		if before != "int64 7" || after == before {
			t.Fatalf("stdlib gives %s, then %s after the registration: the test checks nothing", before, after)
		}
		return after
	}

	// Inside Raw, through either way of getting the pgx connection.
	for name, pgxConn := range map[string]func(context.Context, *tenantpg.Conn) (*pgx.Conn, error){
		"Raw Conn":        func(_ context.Context, h *tenantpg.Conn) (*pgx.Conn, error) { return h.Conn(), nil },
		"Raw ConnContext": func(ctx context.Context, h *tenantpg.Conn) (*pgx.Conn, error) { return h.ConnContext(ctx) },
	} {
		t.Run(name, func(t *testing.T) {
			want := want(t)
			ctx := tenantpg.WithTenant(testCtx(t), "t01")
			_, tp := rowsPair(t, env, "cache_statement")
			if got := scanOne(ctx, tp, q, new(any)); got != "int64 7" {
				t.Fatalf("before: %s", got)
			}
			err := tp.Raw(func(dc any) error {
				conn, err := pgxConn(ctx, dc.(*tenantpg.Conn))
				if err == nil {
					int4AsInt8(conn)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := scanOne(ctx, tp, q, new(any)); got != want {
				t.Fatalf("after registering int4 as int8: tenantpg %s, stdlib %s", got, want)
			}
		})
	}

	// Between a query and its first row, as database/sql allows on a
	// *sql.Conn: stdlib plans at the first Next, so the registration
	// applies to the open rows.
	t.Run("Raw while rows are open", func(t *testing.T) {
		ctx := testCtx(t)
		std, tp := rowsPair(t, env, "cache_statement")
		read := func(c *sql.Conn) string {
			if got := scanOne(ctx, c, q, new(any)); got != "int64 7" { // plans cached
				return "before: " + got
			}
			rs, err := c.QueryContext(ctx, q)
			if err != nil {
				return err.Error()
			}
			defer rs.Close()
			if err := rawInt4AsInt8(c); err != nil {
				return err.Error()
			}
			var v any
			if !rs.Next() {
				return fmt.Sprintf("no row: %v", rs.Err())
			}
			if err := rs.Scan(&v); err != nil {
				return "error: " + err.Error()
			}
			return fmt.Sprintf("%T %#v", v, v)
		}
		want := read(std)
		if want == "int64 7" || strings.HasPrefix(want, "before") {
			t.Fatalf("stdlib gives %s: the test checks nothing", want)
		}
		if got := read(tp); got != want {
			t.Fatalf("registered while rows were open: tenantpg %s, stdlib %s", got, want)
		}
	})

	t.Run("native pool", func(t *testing.T) {
		want := want(t)
		ctx := tenantpg.WithTenant(testCtx(t), "t01")
		db := open(t, withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}",
			"default_query_exec_mode=cache_statement", "pool_max_conns=1"))
		var pid, got any
		if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if g := scanOne(ctx, db, q, new(any)); g != "int64 7" {
			t.Fatalf("before: %s", g)
		}
		// The reaper gives the parked connection back to pgxpool within
		// a second; then pgx-native code can acquire it.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if st := stats(t, db); len(st.Pools) == 1 && st.Pools[0].Parked == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the connection stayed parked")
			}
		}
		pool, err := tenantpg.Pool(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = c.QueryRow(ctx, "select pg_backend_pid()").Scan(&got)
		int4AsInt8(c.Conn())
		c.Release()
		if err != nil || fmt.Sprint(got) != fmt.Sprint(pid) {
			t.Fatalf("pgx-native code got backend %v (%v), want tenantpg's %v", got, err, pid)
		}
		if g := scanOne(ctx, db, q, new(any)); g != want {
			t.Fatalf("after registering int4 as int8 on the pool's connection: tenantpg %s, stdlib %s", g, want)
		}
	})
}
