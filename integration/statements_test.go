package integration

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// tenantpg runs database/sql's queries and execs on pgconn, with a
// statement cache of its own in cache_statement mode (statements.go).
// These tests hold it to what pgx's Conn.Query does.

// serverStatements returns the names of the statements tenantpg prepared
// on conn's server session, read without preparing one.
func serverStatements(t *testing.T, ctx context.Context, conn *sql.Conn) []string {
	t.Helper()
	var names []string
	mustRaw(t, conn, func(pc *pgx.Conn) error {
		rows, err := pc.Query(ctx, `select name from pg_prepared_statements where name like 'tenantpg\_%' order by name`,
			pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			return err
		}
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return names
}

// tenantDB opens tenantpg for tenant t01 of the shared servers, logging in
// directly as the tenant's user with the extra DSN parameters, and returns
// it with a context of t01.
func tenantDB(t *testing.T, extra ...string) (context.Context, *sql.DB) {
	t.Helper()
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	db := directUserDB(t, env, extra...)
	return tenantpg.WithTenant(testCtx(t), "t01"), db
}

// tenantSession returns a *sql.Conn of tenant t01, opened with the DSN params
// extra, and its context; both end with the test.
func tenantSession(t *testing.T, extra ...string) (context.Context, *sql.Conn) {
	t.Helper()
	ctx, db := tenantDB(t, extra...)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ctx, conn
}

func mustRaw(t *testing.T, conn *sql.Conn, f func(*pgx.Conn) error) {
	t.Helper()
	if err := rawConn(conn, f); err != nil {
		t.Fatal(err)
	}
}

// TestNamedStatementsRunByName: pgx runs a query whose text is the name of
// a statement pgx.Conn.Prepare made on the connection as that statement,
// through stdlib too; a user's AfterConnect hook that prepares statements
// relies on it. tenantpg runs such queries through pgx, in and outside
// transactions, for names given in a hook and inside Raw.
func TestNamedStatementsRunByName(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	for _, mode := range []string{"cache_statement", "exec"} {
		t.Run(mode, func(t *testing.T) {
			db := hookedUserDB(t, env, func(pc *pgxpool.Config) {
				pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
					if _, err := c.Prepare(ctx, "whoami", "select current_user || ':' || $1::text"); err != nil {
						return err
					}
					_, err := c.Prepare(ctx, "double it", "select 2 * $1::int")
					return err
				}
			}, "default_query_exec_mode="+mode)
			ctx := tenantpg.WithTenant(testCtx(t), "t01")
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			mustRaw(t, conn, func(c *pgx.Conn) error {
				_, err := c.Prepare(ctx, "later", "select 'prepared in Raw'")
				return err
			})
			check := func(q interface {
				QueryRowContext(context.Context, string, ...any) *sql.Row
			}, where string) {
				if s, err := queryString(ctx, q, "whoami", "x"); err != nil || s != "app.t01:x" {
					t.Errorf("%s: whoami: %q, %v", where, s, err)
				}
				var n int
				if err := q.QueryRowContext(ctx, "double it", 21).Scan(&n); err != nil || n != 42 {
					t.Errorf("%s: double it: %d, %v", where, n, err)
				}
				if s, err := queryString(ctx, q, "later"); err != nil || s != "prepared in Raw" {
					t.Errorf("%s: later: %q, %v", where, s, err)
				}
			}
			check(conn, "outside a transaction")
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback() // a failure below must not leave conn.Close waiting for the transaction
			check(tx, "in a transaction")
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(ctx, "double it", 1); err != nil {
				t.Errorf("exec by name: %v", err)
			}
		})
	}
}

// TestStatementCacheFollowsTheSchema: a cached statement whose result no
// longer fits the table fails once, as under pgx ("cached plan must not
// change result type"), and is deallocated and prepared again: the next
// query sees the new column, and the server keeps one statement for it.
func TestStatementCacheFollowsTheSchema(t *testing.T) {
	ctx, conn := tenantSession(t, "default_query_exec_mode=cache_statement")
	if _, err := conn.ExecContext(ctx, "create temp table s as select 1 as a"); err != nil {
		t.Fatal(err)
	}
	const q = "select * from s where a = $1"
	cols := func() ([]string, error) {
		rows, err := conn.QueryContext(ctx, q, 1)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		c, err := rows.Columns()
		if err != nil {
			return nil, err
		}
		for rows.Next() {
		}
		return c, rows.Err()
	}
	if c, err := cols(); err != nil || len(c) != 1 {
		t.Fatalf("first query: %v, %v", c, err)
	}
	if n := serverStatements(t, ctx, conn); len(n) != 1 {
		t.Fatalf("tenantpg's statements on the server: %v, want the query's one (the fast path is not in use?)", n)
	}
	if _, err := conn.ExecContext(ctx, "alter table s add column b text"); err != nil {
		t.Fatal(err)
	}
	var pe *pgconn.PgError
	if _, err := cols(); !errors.As(err, &pe) || pe.Code != "0A000" {
		t.Fatalf("after the alter: %v, want pgx's error for a changed result type (0A000)", err)
	}
	if c, err := cols(); err != nil || len(c) != 2 {
		t.Fatalf("the next query: %v, %v; want it prepared again, with both columns", c, err)
	}
	if n := serverStatements(t, ctx, conn); len(n) != 1 {
		t.Fatalf("tenantpg's statements on the server: %v, want one: the failed one deallocated", n)
	}
}

// TestStatementCacheCapacity: at most statement_cache_capacity statements
// per connection, the least recently used deallocated.
func TestStatementCacheCapacity(t *testing.T) {
	ctx, conn := tenantSession(t, "default_query_exec_mode=cache_statement", "statement_cache_capacity=2")
	query := func(q string) {
		t.Helper()
		var n int
		if err := conn.QueryRowContext(ctx, q, 1).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	qs := []string{"select $1::int + 1", "select $1::int + 2", "select $1::int + 3", "select $1::int + 4"}
	for _, q := range qs {
		query(q)
	}
	query(qs[2]) // most recent now; qs[3] next
	query(qs[1]) // evicts qs[3]: deallocated before the next execution
	if n := serverStatements(t, ctx, conn); len(n) != 3 {
		t.Fatalf("%d statements on the server after 4 queries under capacity 2, want 3 (one evicted, one pending deallocation): %v", len(n), n)
	}
	if _, err := conn.ExecContext(ctx, "select $1::int + 2", 1); err != nil { // cached: deallocates only
		t.Fatal(err)
	}
	n := serverStatements(t, ctx, conn)
	want := []string{statementName(qs[1]), statementName(qs[2])}
	slices.Sort(want)
	if strings.Join(n, ",") != strings.Join(want, ",") {
		t.Fatalf("statements on the server: %v, want those of the two most recent queries %v", n, want)
	}
}

// TestStatementsDeallocatedByOthers: code inside Raw that deallocates every
// statement (pgx.Conn.DeallocateAll, DISCARD ALL) leaves tenantpg's cache
// pointing at nothing. Outside a transaction the next query or exec finds
// its statement missing, and it is prepared and sent again; in a
// transaction, begun after Raw or with Raw inside it, the first statement
// after Raw empties the cache first, so none fails (pgx's own cache, which
// DeallocateAll empties, would not fail there either). So does the same
// SQL sent through database/sql.
func TestStatementsDeallocatedByOthers(t *testing.T) {
	ctx, conn := tenantSession(t, "default_query_exec_mode=cache_statement")
	const q = "select $1::int * 3"
	three := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) error {
		var n int
		if err := q.QueryRowContext(ctx, "select $1::int * 3", 2).Scan(&n); err != nil {
			return err
		}
		if n != 6 {
			t.Fatalf("got %d", n)
		}
		return nil
	}
	if err := three(conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, q, 1); err != nil {
		t.Fatal(err)
	}
	drops := []func(*pgx.Conn) error{
		func(c *pgx.Conn) error { return c.DeallocateAll(ctx) },
		func(c *pgx.Conn) error { _, err := c.Exec(ctx, "discard all"); return err },
	}
	for _, drop := range drops {
		mustRaw(t, conn, drop)
		if err := three(conn); err != nil {
			t.Fatalf("query after the statements were deallocated: %v", err)
		}
		mustRaw(t, conn, drop)
		if _, err := conn.ExecContext(ctx, q, 1); err != nil {
			t.Fatalf("exec after the statements were deallocated: %v", err)
		}
	}
	others := []string{q, "select $1::int + 10", "select $1::int + 11"}
	for _, q := range others {
		if _, err := conn.ExecContext(ctx, q, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, drop := range drops {
		mustRaw(t, conn, drop)
		if err := inTx(ctx, conn, others...); err != nil {
			t.Fatalf("a transaction after the statements were deallocated: %v", err)
		}
	}
	// DEALLOCATE ALL inside a transaction (DISCARD ALL cannot run in one).
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, q := range others {
		if _, err := tx.ExecContext(ctx, q, 1); err != nil {
			t.Fatal(err)
		}
	}
	mustRaw(t, conn, func(c *pgx.Conn) error { _, err := c.Exec(ctx, "deallocate all"); return err })
	for _, q := range others {
		if _, err := tx.ExecContext(ctx, q, 1); err != nil {
			t.Fatalf("%s after DEALLOCATE ALL inside the transaction: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// The same through database/sql, where tenantpg sees only the SQL: an
	// exec without arguments (which pgx sends), and a query (which
	// tenantpg sends itself).
	for _, sql := range []string{"DISCARD ALL", "select 1; deallocate all"} {
		if _, err := conn.ExecContext(ctx, sql); err != nil {
			t.Fatal(err)
		}
		if err := inTx(ctx, conn, others...); err != nil {
			t.Fatalf("a transaction after %q: %v", sql, err)
		}
	}
	for i := 0; i < 2; i++ { // the second time from the cache
		rows, err := conn.QueryContext(ctx, "DISCARD ALL")
		if err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if err := inTx(ctx, conn, others...); err != nil {
			t.Fatalf("a transaction after the query DISCARD ALL: %v", err)
		}
	}
}

// inTx runs each of qs with the argument 1 in one transaction on conn.
func inTx(ctx context.Context, conn *sql.Conn, qs ...string) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a failure must not leave conn.Close waiting for the transaction
	for _, q := range qs {
		if _, err := tx.ExecContext(ctx, q, 1); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// txOnCheckout runs inTx on a checkout of db.
func txOnCheckout(ctx context.Context, db *sql.DB, qs ...string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return inTx(ctx, conn, qs...)
}

// TestStatementsDeallocatedByHooks: the user's pool hooks run on
// connections tenantpg then uses for database/sql; one that discards all
// session state (here PrepareConn, on every acquisition from pgxpool) must
// not make the next transaction fail on a statement tenantpg cached
// before.
func TestStatementsDeallocatedByHooks(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	var discards atomic.Int64
	db := hookedUserDB(t, env, func(pc *pgxpool.Config) {
		pc.PrepareConn = func(ctx context.Context, c *pgx.Conn) (bool, error) {
			discards.Add(1)
			_, err := c.Exec(ctx, "discard all")
			return err == nil, err
		}
	}, "default_query_exec_mode=cache_statement", "pool_max_conns=1")
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	const q = "select $1::int + 20"
	for i := 0; i < 3; i++ {
		if err := txOnCheckout(ctx, db, q, q); err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
		// Give the tenant's connection back to pgxpool, so that the next
		// checkout acquires it again and the hook runs.
		if _, err := tenantpg.Pool(ctx, db); err != nil {
			t.Fatal(err)
		}
	}
	if n := discards.Load(); n < 3 {
		t.Fatalf("the hook ran %d times, want one per transaction", n)
	}
}

// TestStatementsDeallocatedNatively: pgx-native code on the tenant's Pool
// that deallocates every statement of a connection database/sql then uses
// must not make the next transaction fail.
func TestStatementsDeallocatedNatively(t *testing.T) {
	ctx, db := tenantDB(t, "default_query_exec_mode=cache_statement", "pool_max_conns=1")
	const q = "select $1::int + 30"
	for i := 0; i < 3; i++ {
		if err := txOnCheckout(ctx, db, q, q); err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
		if i == 2 {
			break
		}
		pool, err := tenantpg.Pool(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		var pc *pgxpool.Conn
		if i == 0 {
			pc, err = pool.Acquire(ctx) // the tenant's only connection
		} else if idle := pool.AcquireAllIdle(ctx); len(idle) == 1 {
			pc = idle[0] // no acquire tracer sees this one
		} else {
			err = fmt.Errorf("%d idle connections, want the tenant's only one", len(idle))
		}
		if err != nil {
			t.Fatal(err)
		}
		err = pc.Conn().DeallocateAll(ctx)
		pc.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestOwnReleasesKeepTheCache: tenantpg giving a connection back to pgxpool
// (here through Pool, which gives parked connections back) is not code
// outside tenantpg: the next transaction on it reuses the cached
// statement instead of preparing it again.
func TestOwnReleasesKeepTheCache(t *testing.T) {
	ctx, db := tenantDB(t, "default_query_exec_mode=cache_statement", "pool_max_conns=1")
	const q = "select $1::int + 40"
	prepared := func() string {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := inTx(ctx, conn, q); err != nil {
			t.Fatal(err)
		}
		// Through database/sql: Raw would make the cache unsure.
		at, err := queryString(ctx, conn, "select prepare_time::text from pg_prepared_statements where name = $1", statementName(q))
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	first := prepared()
	if _, err := tenantpg.Pool(ctx, db); err != nil {
		t.Fatal(err)
	}
	if again := prepared(); again != first {
		t.Fatalf("the statement was prepared again (%s, then %s) after tenantpg's own give-back", first, again)
	}
}

// TestStatementPreparedAgainForNewParameterTypes: a cached statement whose
// arguments no longer encode (a migration changed a parameter's type) is
// dropped, as pgx drops it, so the next exec prepares it for the new
// types instead of failing until the connection ends.
func TestStatementPreparedAgainForNewParameterTypes(t *testing.T) {
	ctx, conn := tenantSession(t, "default_query_exec_mode=cache_statement")
	for _, q := range []string{"create temp table p (a bool)", "insert into p values (true)"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const q = "update p set a = $1"
	if _, err := conn.ExecContext(ctx, q, true); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "alter table p alter column a type int8[] using array[1]"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, q, []int64{1, 2}); err == nil || !strings.Contains(err.Error(), "failed to encode args[0]") {
		t.Fatalf("the first exec after the migration: %v, want the cached statement's encoding error", err)
	}
	if _, err := conn.ExecContext(ctx, q, []int64{1, 2}); err != nil {
		t.Fatalf("the second: %v, want it prepared again for the new type", err)
	}
}

// TestManyNamedStatements: names given to pgx.Conn.Prepare are kept so that
// queries by name go through pgx; past 1,024 of them (names made per use)
// the connection leaves every query to pgx rather than keep more.
func TestManyNamedStatements(t *testing.T) {
	ctx, conn := tenantSession(t, "default_query_exec_mode=cache_statement")
	mustRaw(t, conn, func(c *pgx.Conn) error {
		for i := 0; i <= 1024; i++ {
			if _, err := c.Prepare(ctx, fmt.Sprintf("n%d", i), "select 1"); err != nil {
				return err
			}
		}
		return nil
	})
	var n int
	if err := conn.QueryRowContext(ctx, "n1024").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query by the last name: %d, %v", n, err)
	}
	if err := conn.QueryRowContext(ctx, "select $1::int", 2).Scan(&n); err != nil || n != 2 {
		t.Fatal(n, err)
	}
	if names := serverStatements(t, ctx, conn); len(names) != 0 {
		t.Fatalf("tenantpg prepared %v on a connection past the names' bound", names)
	}
}

// TestStatementErrorsAsPgx: the errors of queries tenantpg sends itself
// are pgx's, and the session stays usable after each.
func TestStatementErrorsAsPgx(t *testing.T) {
	for _, mode := range []string{"cache_statement", "exec"} {
		t.Run(mode, func(t *testing.T) {
			ctx, conn := tenantSession(t, "default_query_exec_mode="+mode)
			var pe *pgconn.PgError
			if _, err := conn.QueryContext(ctx, "selec 1"); !errors.As(err, &pe) || pe.Code != "42601" {
				t.Errorf("syntax error: %v", err)
			}
			if _, err := conn.ExecContext(ctx, "selec $1", 1); !errors.As(err, &pe) || pe.Code != "42601" {
				t.Errorf("syntax error (exec): %v", err)
			}
			if _, err := conn.QueryContext(ctx, "select 1/$1::int", 0); !errors.As(err, &pe) || pe.Code != "22012" {
				t.Errorf("division by zero: %v", err)
			}
			_, err := conn.QueryContext(ctx, "select $1::int", 1, 2)
			if mode == "cache_statement" && (err == nil || err.Error() != "expected 1 arguments, got 2") {
				t.Errorf("too many arguments: %v, want pgx's message", err)
			}
			_, err = conn.ExecContext(ctx, "select $1::int", 1, 2)
			if mode == "cache_statement" && (err == nil || err.Error() != "mismatched param and argument count") {
				t.Errorf("too many arguments (exec): %v, want pgx's message", err)
			}
			if mode == "exec" && (!errors.As(err, &pe) || pe.Code != "08P01") {
				t.Errorf("too many arguments: %v, want the server's protocol violation", err)
			}
			if _, err := conn.QueryContext(ctx, "select $1::int", struct{}{}); err == nil || !strings.Contains(err.Error(), "args[0]") {
				t.Errorf("an argument pgx cannot encode: %v", err)
			}
			var n int
			if err := conn.QueryRowContext(ctx, "select $1::int", 5).Scan(&n); err != nil || n != 5 {
				t.Fatalf("the session after the errors: %d, %v", n, err)
			}
			if names := serverStatements(t, ctx, conn); mode == "cache_statement" && len(names) != 1 {
				t.Fatalf("tenantpg's statements: %v, want the last query's (did tenantpg send them?)", names)
			}
		})
	}
}

// statementName is tenantpg's name for query's statement (statements.go).
func statementName(query string) string {
	d := sha256.Sum256([]byte(query))
	return "tenantpg_" + hex.EncodeToString(d[:24])
}
