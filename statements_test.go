package tenantpg

import (
	"database/sql/driver"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// cached adds a statement for query to st as statement does after a
// prepare.
func cached(st *connState, query string) *cachedStmt {
	cs := &cachedStmt{sd: &pgconn.StatementDescription{SQL: query, Name: statementName(query)}}
	st.add(cs)
	return cs
}

// order returns the cached queries from most to least recently used,
// checking the list against the map both ways.
func order(t *testing.T, st *connState) []string {
	t.Helper()
	var fwd, back []string
	for cs := st.head; cs != nil; cs = cs.next {
		fwd = append(fwd, cs.sd.SQL)
		if st.stmts[cs.sd.SQL] != cs {
			t.Fatalf("%q is listed but not in the map", cs.sd.SQL)
		}
	}
	for cs := st.tail; cs != nil; cs = cs.prev {
		back = append(back, cs.sd.SQL)
	}
	slices.Reverse(back)
	if !slices.Equal(fwd, back) || len(fwd) != len(st.stmts) {
		t.Fatalf("list %v, backwards %v, map of %d", fwd, back, len(st.stmts))
	}
	return fwd
}

func TestStatementCacheEvictsLeastRecentlyUsed(t *testing.T) {
	st := &connState{max: 3}
	a, b := cached(st, "a"), cached(st, "b")
	cached(st, "c")
	if got := order(t, st); !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Fatalf("order %v", got)
	}
	st.unlink(a) // a hit, as statement does it
	st.push(a)
	cached(st, "d") // evicts b, the least recently used
	if got := order(t, st); !slices.Equal(got, []string{"d", "a", "c"}) {
		t.Fatalf("order %v after a hit on a and a fourth statement", got)
	}
	if !slices.Equal(st.stale, []string{b.sd.Name}) {
		t.Fatalf("stale %v, want b's statement to deallocate", st.stale)
	}
	// A failed execution drops the statement once; a second report of the
	// same failure, or of a statement prepared again since, drops nothing.
	st.failed(a, errTest)
	st.failed(a, errTest)
	if got := order(t, st); !slices.Equal(got, []string{"d", "c"}) || len(st.stale) != 2 {
		t.Fatalf("order %v, stale %v after a's failure", got, st.stale)
	}
	a2 := cached(st, "a")
	st.failed(a, errTest)
	if st.stmts["a"] != a2 || len(st.stale) != 2 {
		t.Fatal("the failure of a's old statement dropped its new one")
	}
	st.failed(a2, nil) // success
	st.failed(nil, errTest)
	if got := order(t, st); !slices.Equal(got, []string{"a", "d", "c"}) {
		t.Fatalf("order %v", got)
	}
}

type testErr struct{}

func (testErr) Error() string { return "test" }

var errTest error = testErr{}

func TestStatementNameIsNotPgxs(t *testing.T) {
	n := statementName("select 1")
	if len(n) > 63 {
		t.Fatalf("%q is longer than PostgreSQL's identifiers", n)
	}
	if n == statementName("select 2") || n[:9] != "tenantpg_" {
		t.Fatalf("%q", n)
	}
}

func TestRunsOnlyWhatPgxWouldRunTheSameWay(t *testing.T) {
	st := &connState{fast: true, names: map[string]struct{}{"byname": {}}}
	args := func(vs ...any) []driver.NamedValue {
		nv := make([]driver.NamedValue, len(vs))
		for i, v := range vs {
			nv[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
		}
		return nv
	}
	for _, c := range []struct {
		query string
		args  []driver.NamedValue
		want  bool
	}{
		{"select $1", args(1), true},
		{"select 1", nil, true},
		{"", nil, false},           // pgx sends it by the simple protocol
		{"byname", args(1), false}, // a statement pgx.Conn.Prepare named
		{"select @a", args(pgx.NamedArgs{"a": 1}), false},
		{"select $1", args(pgx.QueryExecModeExec, 1), false},
		{"select $1", args(pgx.QueryResultFormats{1}, 1), false},
		{"select $1", args(pgx.QueryResultFormatsByOID{23: 1}, 1), false},
		{"select $1, $2", args(1, pgx.QueryExecModeExec), false}, // not leading: still not encodable the same way
	} {
		if got := st.runs(c.query, c.args); got != c.want {
			t.Errorf("runs(%q, %v) = %v, want %v", c.query, c.args, got, c.want)
		}
	}
	st.fast = false
	if st.runs("select 1", nil) {
		t.Error("runs on a connection with a tracer or another exec mode")
	}
}

func TestDeallocates(t *testing.T) {
	for sql, want := range map[string]bool{
		"DISCARD ALL":                   true,
		"select 1; Deallocate all":      true,
		"deallocate prepare x":          true,
		"select 1":                      false,
		"select 'd'":                    false,
		"discar":                        false,
		"update t set d = 1 where dd=2": false,
		"":                              false,
		"select discarded_at from t":    false,
		"update t set is_discarded = 1": false,
		"select deallocate$1":           false,
		"select 1;discard all":          true,
		"(DEALLOCATE)":                  true,
	} {
		if got := deallocates(sql); got != want {
			t.Errorf("deallocates(%q) = %v, want %v", sql, got, want)
		}
	}
}
