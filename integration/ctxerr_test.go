package integration

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestEndedContextDoesNotPoisonASession: a *sql.Conn whose binding failed
// because the context it was made with ended (here: waiting for the
// tenant's only connection) kept that failure for every later operation,
// until closed, also under live contexts. Operations under a live context
// now bind again. So does a tenant-less *sql.Conn whose first statement's
// context ended while binding it.
func TestEndedContextDoesNotPoisonASession(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	ctx := testCtx(t)
	tctx := tenantpg.WithTenant(ctx, "t01")
	for _, c := range []struct {
		name string
		open func(db *sql.DB) (*sql.Conn, error) // a *sql.Conn whose binding fails by its context
	}{
		{"checkout's own context (ResetSession)", func(db *sql.DB) (*sql.Conn, error) {
			short, cancel := context.WithTimeout(tctx, 30*time.Millisecond)
			defer cancel()
			return db.Conn(short)
		}},
		{"first statement's context (late binding)", func(db *sql.DB) (*sql.Conn, error) {
			conn, err := db.Conn(ctx)
			if err != nil {
				return nil, err
			}
			short, cancel := context.WithTimeout(tctx, 30*time.Millisecond)
			defer cancel()
			if _, err := conn.ExecContext(short, "select 1"); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("binding by a statement whose context ended: %v", err)
			}
			return conn, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := directUserDB(t, env, "pool_max_conns=1")
			// Two idle handles without a connection, so that the *sql.Conn
			// below reuses one (ResetSession) rather than connecting.
			var idle [2]*sql.Conn
			for i := range idle {
				var err error
				if idle[i], err = db.Conn(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range idle {
				c.Close()
			}
			holder, err := db.Conn(tctx) // the tenant's only connection
			if err != nil {
				t.Fatal(err)
			}
			if _, err := holder.ExecContext(tctx, "select 1"); err != nil {
				t.Fatal(err)
			}
			conn, err := c.open(db)
			if err != nil {
				t.Fatalf("db.Conn: %v", err)
			}
			defer conn.Close()
			holder.Close()
			var user string
			if err := conn.QueryRowContext(tctx, "select current_user").Scan(&user); err != nil || user != "app.t01" {
				t.Fatalf("the next statement under a live context: %q, %v", user, err)
			}
		})
	}
}

// TestSendFailuresKeepTheSession: an operation that fails before sending
// anything on a connection that is fine (a context that had ended, "conn
// busy" while the *sql.Conn's rows are open) returns its error, not
// driver.ErrBadConn, which made database/sql close the *sql.Conn (waiting
// for the open rows first) and hid the reason.
func TestSendFailuresKeepTheSession(t *testing.T) {
	tctx, conn := tenantSession(t)
	var pid int
	if err := conn.QueryRowContext(tctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}

	ended, cancel := context.WithCancel(tctx)
	cancel()
	if _, err := conn.ExecContext(ended, "select 2"); !errors.Is(err, context.Canceled) {
		t.Errorf("Exec under an ended context: %v, want context.Canceled", err)
	}
	if _, err := conn.QueryContext(ended, "select 3"); !errors.Is(err, context.Canceled) {
		t.Errorf("Query under an ended context: %v, want context.Canceled", err)
	}

	rows, err := conn.QueryContext(tctx, "select generate_series(1, 3)")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := conn.ExecContext(tctx, "select 4"); done <- err }()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, driver.ErrBadConn) {
			t.Errorf("Exec while the session's rows are open: %v, want pgx's conn busy", err)
		}
		rows.Close()
	case <-time.After(2 * time.Second):
		t.Error("Exec while the session's rows are open waits for them (the *sql.Conn is being closed)")
		rows.Close()
		<-done
	}

	var again int
	if err := conn.QueryRowContext(tctx, "select pg_backend_pid()").Scan(&again); err != nil || again != pid {
		t.Fatalf("the session after the failures: backend %d, %v; want %d", again, err, pid)
	}
}
