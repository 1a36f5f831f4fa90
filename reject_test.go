package tenantpg

import (
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
