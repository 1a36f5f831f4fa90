package tenantpg

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// rejection reports whether err is a server's or pooler's refusal of the
// tenant itself (rather than an outage): an unknown Supavisor tenant, an
// unknown PgBouncer alias or user, or a PostgreSQL database or role that does
// not exist or may not log in. Only a FATAL error of the login itself counts
// (a *pgconn.ConnectError); errors of hooks run after login do not.
func rejection(err error) (*pgconn.PgError, bool) {
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return nil, false
	}
	var pe *pgconn.PgError
	if !errors.As(ce, &pe) {
		return nil, false
	}
	return pe, isRejection(pe)
}

// isRejection classifies a login error by severity, SQLSTATE and, for the
// poolers' generic codes, message.
func isRejection(pe *pgconn.PgError) bool {
	if pe.Severity != "FATAL" {
		return false
	}
	switch pe.Code {
	case "3D000", // invalid_catalog_name: database does not exist
		"28000", // invalid_authorization_specification: role does not exist, no pg_hba entry
		"28P01", // invalid_password
		"42501": // insufficient_privilege: no CONNECT on the database
		return true
	case "XX000": // Supavisor
		return strings.Contains(pe.Message, "(ENOTFOUND)") ||
			strings.Contains(pe.Message, "Tenant or user not found") ||
			strings.Contains(pe.Message, "(ENOIDENTIFIER)")
	case "08P01": // PgBouncer
		m := pe.Message
		return strings.HasPrefix(m, "no such database") ||
			strings.HasPrefix(m, "no such user") ||
			strings.Contains(m, "authentication failed") ||
			(strings.HasPrefix(m, "database ") && strings.HasSuffix(m, "does not exist"))
	}
	return false
}

// rejectCache remembers rejected tenants for a while so that a typo or an
// attacker cannot make tenantpg dial the pooler for every request.
type rejectCache struct {
	ttl time.Duration

	mu sync.Mutex
	m  map[string]*RejectedError
}

func newRejectCache(ttl time.Duration) *rejectCache {
	return &rejectCache{ttl: ttl, m: map[string]*RejectedError{}}
}

// get returns the cached rejection of tenant, marked Cached, or nil.
func (r *rejectCache) get(tenant string) error {
	if r.ttl <= 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.m[tenant]
	if e == nil {
		return nil
	}
	if time.Now().After(e.Until) {
		delete(r.m, tenant)
		return nil
	}
	c := *e
	c.Cached = true
	return &c
}

// put returns a rejection of tenant, recorded if store is set.
func (r *rejectCache) put(tenant string, err error, store bool) *RejectedError {
	re := &RejectedError{Tenant: tenant, Err: err, Until: time.Now()}
	if store {
		re.Until = re.Until.Add(max(r.ttl, 0))
	}
	if store && r.ttl > 0 {
		r.mu.Lock()
		r.m[tenant] = re
		r.mu.Unlock()
	}
	return re
}

// forget drops tenant's rejection, if any.
func (r *rejectCache) forget(tenant string) {
	r.mu.Lock()
	delete(r.m, tenant)
	r.mu.Unlock()
}

// purge drops expired rejections.
func (r *rejectCache) purge(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for t, e := range r.m {
		if now.After(e.Until) {
			delete(r.m, t)
		}
	}
	// Maps keep their buckets after deletes: start afresh once empty.
	if len(r.m) == 0 {
		r.m = map[string]*RejectedError{}
	}
}

func (r *rejectCache) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}
