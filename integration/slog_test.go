package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// logCapture is a slog.Handler that keeps every record it is given.
type logCapture struct {
	mu   *sync.Mutex
	recs *[]logRecord
	with []slog.Attr
}

// logRecord is a captured record with its attributes flattened.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]slog.Value
	req   string // the requestKey value of the context it was logged with
}

// requestKey marks a caller's context, to see which events are logged with it.
type requestKey struct{}

func newLogCapture() (*slog.Logger, *logCapture) {
	h := &logCapture{mu: &sync.Mutex{}, recs: &[]logRecord{}}
	return slog.New(h), h
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCapture) Handle(ctx context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]slog.Value{}}
	rec.req, _ = ctx.Value(requestKey{}).(string)
	for _, a := range h.with {
		rec.attrs[a.Key] = a.Value.Resolve()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Resolve()
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.with = append(append([]slog.Attr{}, h.with...), as...)
	return &c
}

func (h *logCapture) WithGroup(string) slog.Handler { return h } // tenantpg uses no groups

// records returns the captured records with message msg.
func (h *logCapture) records(msg string) []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRecord
	for _, r := range *h.recs {
		if r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// wait returns the first record with message msg, waiting up to d for it.
func (h *logCapture) wait(t *testing.T, msg string, d time.Duration) logRecord {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if rs := h.records(msg); len(rs) > 0 {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q event within %s; got %v", msg, d, h.messages())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *logCapture) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range *h.recs {
		out = append(out, r.msg)
	}
	return out
}

// want checks that r has the level and exactly the given attribute keys,
// with the given string values where one is given ("" means any value).
func (r logRecord) want(t *testing.T, level slog.Level, attrs map[string]string) {
	t.Helper()
	if r.level != level {
		t.Errorf("%q: level %v, want %v", r.msg, r.level, level)
	}
	if !strings.HasPrefix(r.msg, "tenantpg: ") {
		t.Errorf("%q: message lacks the tenantpg: prefix", r.msg)
	}
	for k, v := range attrs {
		got, ok := r.attrs[k]
		if !ok {
			t.Errorf("%q: attribute %s missing (have %v)", r.msg, k, r.attrs)
			continue
		}
		if v != "" && got.String() != v {
			t.Errorf("%q: %s = %q, want %q", r.msg, k, got.String(), v)
		}
	}
	if len(r.attrs) != len(attrs) {
		t.Errorf("%q: attributes %v, want keys of %v", r.msg, r.attrs, attrs)
	}
}

// loggedDB opens a Connector for dsn whose Config.Logger captures records.
func loggedDB(t *testing.T, dsn string) (*sql.DB, *logCapture) {
	t.Helper()
	cfg, err := tenantpg.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return loggedConfigDB(t, cfg)
}

func loggedConfigDB(t *testing.T, cfg *tenantpg.Config) (*sql.DB, *logCapture) {
	t.Helper()
	logger, h := newLogCapture()
	cfg.Logger = logger
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, h
}

// TestSlogEvents checks the structured events tenantpg sends to
// Config.Logger, and their attributes, on the real servers.
func TestSlogEvents(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 2)
	base := withParams(env.DirectURL(env.AppUser, env.AppDatabase), "tenant_user={user}.{tenant}")
	target := func(tenant string) string {
		return fmt.Sprintf("app.%s@%s:%d/%s", tenant, env.Host, env.PGPort, env.AppDatabase)
	}

	t.Run("pool created and reaped", func(t *testing.T) {
		db, h := loggedDB(t, withParams(base, "tenant_pool_idle=200ms"))
		ctx := tenantpg.WithTenant(testCtx(t), "t01")
		for range 3 {
			if _, err := db.ExecContext(ctx, "select 1"); err != nil {
				t.Fatal(err)
			}
		}
		created := h.records("tenantpg: pool created")
		if len(created) != 1 {
			t.Fatalf("%d pool created events for one pool", len(created))
		}
		created[0].want(t, slog.LevelInfo, map[string]string{"tenant": "t01", "target": target("t01"), "pool": ""})

		h.wait(t, "tenantpg: pool closed", 5*time.Second).want(t, slog.LevelInfo,
			map[string]string{"reason": "idle", "target": target("t01"), "pool": "", "tenants": "[t01]"})
	})

	t.Run("pool closed for the budget", func(t *testing.T) {
		db, h := loggedDB(t, withParams(base, "tenant_max_conns=1"))
		ctx := testCtx(t)
		for _, id := range []string{"t01", "t02"} {
			if _, err := db.ExecContext(tenantpg.WithTenant(ctx, id), "select 1"); err != nil {
				t.Fatal(err)
			}
		}
		// t02's connection evicted t01's idle one, which left t01's pool
		// empty and unused, so it was closed.
		h.wait(t, "tenantpg: pool closed", time.Second).
			want(t, slog.LevelInfo, map[string]string{"reason": "budget", "target": target("t01"), "pool": "", "tenants": "[t01]"})
		h.wait(t, "tenantpg: idle connection closed for the connection budget", time.Second).
			want(t, slog.LevelDebug, map[string]string{"target": target("t01"), "pool": "", "for_pool": ""})
		if n := len(h.records("tenantpg: pool created")); n != 2 {
			t.Fatalf("%d pool created events, want 2", n)
		}
	})

	t.Run("tenant forgotten", func(t *testing.T) {
		db, h := loggedDB(t, base)
		ctx := testCtx(t)
		if _, err := db.ExecContext(tenantpg.WithTenant(ctx, "t01"), "select 1"); err != nil {
			t.Fatal(err)
		}
		if err := connectorOf(t, db).Forget(ctx, "t01"); err != nil {
			t.Fatal(err)
		}
		h.wait(t, "tenantpg: tenant forgotten", time.Second).
			want(t, slog.LevelInfo, map[string]string{"tenant": "t01", "target": target("t01"), "pool": ""})
		h.wait(t, "tenantpg: pool closed", time.Second).
			want(t, slog.LevelInfo, map[string]string{"reason": "forgotten", "target": target("t01"), "pool": "", "tenants": "[t01]"})
	})

	t.Run("tenant rejected", func(t *testing.T) {
		db, h := loggedDB(t, base)
		ctx := tenantpg.WithTenant(context.WithValue(testCtx(t), requestKey{}, "r1"), "nosuch")
		for range 10 {
			_, err := db.ExecContext(ctx, "select 1")
			mustErrIs(t, err, tenantpg.ErrTenantRejected)
		}
		rs := h.records("tenantpg: tenant rejected")
		// Repeats fail from the negative cache without an event each.
		if len(rs) != 1 {
			t.Fatalf("%d rejection events for 10 requests, want 1", len(rs))
		}
		rs[0].want(t, slog.LevelWarn, map[string]string{"tenant": "nosuch", "target": target("nosuch"), "code": "28P01", "error": ""})
		// The server's error, SQLSTATE included, is only in the text.
		if msg := rs[0].attrs["error"].String(); !strings.Contains(msg, `"app.nosuch"`) || !strings.Contains(msg, "SQLSTATE 28P01") {
			t.Fatalf("error attribute %q does not carry the server's message", msg)
		}
		if rs[0].req != "r1" {
			t.Errorf("the rejection was not logged with the caller's context")
		}
		// The rejected tenant's pool serves no tenant: the reaper closes it.
		h.wait(t, "tenantpg: pool closed", 2*time.Second).want(t, slog.LevelInfo,
			map[string]string{"reason": "no tenants", "target": target("nosuch"), "pool": "", "tenants": "[]"})
	})

	t.Run("budget exhausted", func(t *testing.T) {
		db, h := loggedDB(t, withParams(base, "tenant_max_conns=1"))
		ctx := testCtx(t)
		held, err := db.Conn(tenantpg.WithTenant(ctx, "t01"))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		wctx, cancel := context.WithTimeout(tenantpg.WithTenant(context.WithValue(ctx, requestKey{}, "r2"), "t02"), 100*time.Millisecond)
		defer cancel()
		_, err = db.ExecContext(wctx, "select 1")
		var be *tenantpg.BudgetError
		if !errors.As(err, &be) {
			t.Fatalf("err = %v, want *BudgetError", err)
		}
		h.wait(t, "tenantpg: waiting for the connection budget", time.Second).
			want(t, slog.LevelDebug, map[string]string{"tenant": "t02", "limit": "1", "open": "1", "waiting": "0"})
		r := h.wait(t, "tenantpg: connection budget exhausted", time.Second)
		r.want(t, slog.LevelWarn, map[string]string{"tenant": "t02", "limit": "1", "waited": ""})
		if r.req != "r2" {
			t.Errorf("the budget event was not logged with the caller's context")
		}
		if w := r.attrs["waited"]; w.Kind() != slog.KindDuration || w.Duration() < 50*time.Millisecond {
			t.Fatalf("waited = %v (%v), want a duration near 100ms", w, w.Kind())
		}
	})

	t.Run("identity check failed", func(t *testing.T) {
		cfg, err := tenantpg.ParseConfig(withParams(env.DirectURL(env.SuperUser, env.AppDatabase), "tenant_schema={tenant}"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Pool.ConnConfig.RuntimeParams["role"] = "app.t01"
		db, h := loggedConfigDB(t, cfg)
		_, err = db.ExecContext(tenantpg.WithTenant(testCtx(t), "t01"), "select 1")
		mustErrIs(t, err, tenantpg.ErrIdentityMismatch)
		h.wait(t, "tenantpg: identity check failed", time.Second).
			want(t, slog.LevelError, map[string]string{"tenant": "t01", "target": fmt.Sprintf("%s@%s:%d/%s", env.SuperUser, env.Host, env.PGPort, env.AppDatabase),
				"field": "user", "got": "app.t01", "want": env.SuperUser})
	})
}
