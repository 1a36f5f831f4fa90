package tenantpg

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestRejection(t *testing.T) {
	login := func(code, msg string) *pgconn.PgError {
		return &pgconn.PgError{Severity: "FATAL", Code: code, Message: msg}
	}
	yes := []*pgconn.PgError{
		login("XX000", "(ENOTFOUND) tenant/user app.acme not found"),
		login("XX000", "Tenant or user not found"),
		login("08P01", "no such database: acme"),
		login("08P01", `database "acme" does not exist`),
		login("08P01", "SASL authentication failed"),
		login("3D000", `database "acme" does not exist`),
		login("28000", `role "app.acme" does not exist`),
		login("28P01", `password authentication failed for user "app.acme"`),
	}
	for _, pe := range yes {
		if !isRejection(pe) {
			t.Errorf("not a rejection: %v", pe)
		}
	}
	no := []*pgconn.PgError{
		login("57P03", "the database system is starting up"),
		login("53300", "sorry, too many clients already"),
		login("XX000", "(ECHECKOUTTIMEOUT) unable to check out connection"),
		login("08P01", "unsupported startup parameter: search_path"),
		{Severity: "ERROR", Code: "42501", Message: "permission denied to set role"}, // a hook's query, not the login
	}
	for _, pe := range no {
		if isRejection(pe) {
			t.Errorf("treated as a rejection: %v", pe)
		}
	}
	// Only errors of the login itself (a *pgconn.ConnectError) count.
	for _, err := range []error{login("3D000", "x"), fmt.Errorf("hook: %w", login("28000", "x")), errors.New("dial tcp: refused")} {
		if _, ok := rejection(err); ok {
			t.Errorf("error outside a ConnectError treated as a rejection: %v", err)
		}
	}
}

func TestRejectCache(t *testing.T) {
	r := newRejectCache(DefaultRejectTTL)
	if r.get("a") != nil {
		t.Fatal("empty cache returned an error")
	}
	cause := errors.New("no such database")
	re := r.put("a", cause, true)
	if re.Cached || !errors.Is(re, ErrTenantRejected) || !errors.Is(re, cause) {
		t.Fatalf("put returned %+v", re)
	}
	err := r.get("a")
	var got *RejectedError
	if !errors.As(err, &got) || !got.Cached || got.Tenant != "a" {
		t.Fatalf("get = %v", err)
	}
	off := newRejectCache(-1)
	off.put("a", cause, true)
	if off.get("a") != nil || off.len() != 0 {
		t.Fatal("disabled cache remembered a rejection")
	}
}

// TestRejectCacheForget checks that forget drops one tenant's rejection
// and only that one (Connector.Forget).
func TestRejectCacheForget(t *testing.T) {
	r := newRejectCache(time.Minute)
	r.put("a", errors.New("no"), true)
	r.put("b", errors.New("no"), true)
	r.forget("a")
	r.forget("never")
	if err := r.get("a"); err != nil {
		t.Errorf("a after forget: %v", err)
	}
	if err := r.get("b"); err == nil {
		t.Error("b was forgotten too")
	}
}

// An explicit 0 turns the negative cache off (tenant_reject_ttl=0) and
// keeps unused pools forever (tenant_pool_idle=0); without the parameters
// the defaults apply.
func TestExplicitZeroDisablesRejectCacheAndReaping(t *testing.T) {
	cause := errors.New("password authentication failed")
	for _, x := range []struct {
		params               string
		cached, reapedInADay bool
	}{
		{"", true, true},
		{"&tenant_reject_ttl=0&tenant_pool_idle=0", false, false},
	} {
		c := offlineConnectorWith(t, x.params)
		e, done := inUse(t, c, "a")
		c.set.reject("a", e, cause)
		if cached := c.rejects.get("a") != nil; cached != x.cached {
			t.Errorf("%q: rejection cached %v, want %v", x.params, cached, x.cached)
		}
		done()

		e, done = inUse(t, c, "b")
		done()
		_, after := reapSchedule(c.settings.poolIdle)
		c.set.reap(c.clock.read()+int64(24*time.Hour), after)
		if reaped := e.isClosed() || c.set.lookup("b") == nil; reaped != x.reapedInADay {
			t.Errorf("%q: unused pool reaped after a day %v, want %v", x.params, reaped, x.reapedInADay)
		}
	}
}

// After Close, Pool fails with ErrClosed, also for a tenant in the
// negative cache (it returned the cached *RejectedError).
func TestPoolAfterCloseIsErrClosed(t *testing.T) {
	c := offlineConnector(t)
	e, done := inUse(t, c, "a")
	c.set.reject("a", e, errors.New("password authentication failed"))
	done()
	if _, err := c.Pool(context.Background(), "a"); !errors.Is(err, ErrTenantRejected) {
		t.Fatalf("Pool of a rejected tenant: %v", err)
	}
	c.Close()
	for _, tenant := range []string{"a", "b"} {
		if _, err := c.Pool(context.Background(), tenant); !errors.Is(err, ErrClosed) {
			t.Errorf("Pool(%q) after Close: %v, want ErrClosed", tenant, err)
		}
	}
}
