package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// countingProxy forwards TCP connections to a server and counts them: an
// independent witness of what tenantpg dials.
type countingProxy struct {
	port    int
	accepts atomic.Int64
	ln      net.Listener
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{port: ln.Addr().(*net.TCPAddr).Port, ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepts.Add(1)
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			for _, pair := range [][2]net.Conn{{c, s}, {s, c}} {
				p.wg.Add(1)
				go func() {
					defer p.wg.Done()
					io.Copy(pair[0], pair[1])
					pair[0].Close()
					pair[1].Close()
				}()
			}
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *countingProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// via rewrites a URL DSN to go through the proxy.
func (p *countingProxy) via(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
	return u.String()
}

// hostAddr returns host:port of a URL DSN.
func hostAddr(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// injectionIDs are tenant ids built to inject into names, to look like
// another tenant, or to collide after PostgreSQL's 63-byte truncation once
// prefix is added. The default pattern refuses every one of them.
func injectionIDs(prefix string) []string {
	long := strings.Repeat("a", 63-len(prefix))
	return []string{
		"", `a'b`, `a"b`, `'; drop table docs; --`, `"; drop role app; --`, `a;b`, "a b", "a\tb", "a\nb",
		"a\x00b", "\x00", "t01\x00", "a.b", ".", "..", "t01.", "app.t01", `a\b`, "a/b", "a=b", "a&b", "a%00b",
		"a?b", "a#b", "{tenant}", "$1", "a,b", "t01,public", "*",
		"t0\u0031\u0301",   // combining accent
		"аcme", "t\u043e1", // Cyrillic а, о
		"t\uff101", "\uff5401", // fullwidth 0, fullwidth t
		"t01\u200b", "t\u200d01", "\ufefft01", "t01\u202e",
		"é", "ß", "ı", "Ⅰ", "t\U0001d7ce1",
		"\xff", "\xc0\xaf", "\xed\xa0\x80",
		long + "x", long + "y", // <prefix><id> is 64 bytes: PostgreSQL would truncate both to the same 63
		strings.Repeat("a", 64) + "x", strings.Repeat("a", 256), strings.Repeat("a", 100000),
	}
}

// alwaysInvalidIDs are refused whatever tenant_pattern allows: NUL bytes,
// invalid UTF-8, more than 255 bytes, names over 63 bytes once rewritten.
func alwaysInvalidIDs() []string {
	long := strings.Repeat("a", 59)
	return []string{"", "a\x00b", "\x00", "t01\x00", "\xff", "\xc0\xaf", "\xed\xa0\x80", "t\xe201",
		long + "x", long + "y", strings.Repeat("a", 60), strings.Repeat("é", 30), strings.Repeat("a", 256)}
}

// tryEverything runs every entry point of a *sql.DB for a tenant and
// returns the errors.
func tryEverything(ctx context.Context, db *sql.DB) map[string]error {
	errs := map[string]error{}
	_, errs["ExecContext"] = db.ExecContext(ctx, "select 1")
	rows, err := db.QueryContext(ctx, "select 1")
	if err == nil {
		rows.Close()
	}
	errs["QueryContext"] = err
	errs["QueryRowContext"] = db.QueryRowContext(ctx, "select 1").Scan(new(int))
	tx, err := db.BeginTx(ctx, nil)
	if err == nil {
		tx.Rollback()
	}
	errs["BeginTx"] = err
	stmt, err := db.PrepareContext(ctx, "select 1")
	if err == nil {
		stmt.Close()
	}
	errs["PrepareContext"] = err
	conn, err := db.Conn(ctx)
	if err == nil {
		err = conn.PingContext(ctx)
		conn.Close()
	}
	errs["Conn"] = err
	errs["PingContext"] = db.PingContext(ctx)
	_, errs["tenantpg.Pool"] = tenantpg.Pool(ctx, db)
	return errs
}

// TestInjectionTenantsNeverDial sends every injection-style tenant id
// through every entry point of four routes, concurrently: each fails with
// ErrInvalidTenant, and neither tenantpg's counters nor a proxy in front of
// the servers see a single connection attempt.
func TestInjectionTenantsNeverDial(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	type route struct {
		name, dsn string
		ids       []string
	}
	permissive := withParams(env.DirectURL(env.AppUser, env.AppDatabase),
		"tenant_user={user}.{tenant}", "tenant_database={tenant}", "tenant_pattern=(?s).%2B")
	routes := []route{
		{routeBouncerUser.name, routeBouncerUser.dsn(env), injectionIDs("app.")},
		{routeBouncerDB.name, routeBouncerDB.dsn(env), injectionIDs("")},
		{routeDirect.name, routeDirect.dsn(env), injectionIDs("app.")},
		// A pattern that allows anything still refuses what PostgreSQL
		// cannot carry or would truncate.
		{"permissive-pattern", permissive, alwaysInvalidIDs()},
	}
	ctx := testCtx(t)
	for _, r := range routes {
		t.Run(r.name, func(t *testing.T) {
			proxy := newCountingProxy(t, hostAddr(t, r.dsn))
			db := open(t, proxy.via(t, r.dsn))
			var wg sync.WaitGroup
			var checked atomic.Int64
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i, id := range r.ids {
						if i%16 != w {
							continue
						}
						for op, err := range tryEverything(tenantpg.WithTenant(ctx, id), db) {
							checked.Add(1)
							if !errors.Is(err, tenantpg.ErrInvalidTenant) {
								t.Errorf("tenant %q, %s: %v, want ErrInvalidTenant", truncate(id), op, err)
							}
						}
					}
				}()
			}
			wg.Wait()
			st := stats(t, db)
			t.Logf("%d operations for %d hostile ids: %d dials, %d pools created, %d proxy connections, %d rejected",
				checked.Load(), len(r.ids), st.Dials, st.PoolsCreated, proxy.accepts.Load(), st.Rejected)
			if st.Dials != 0 || st.PoolsCreated != 0 || len(st.Pools) != 0 || st.Rejected != 0 || proxy.accepts.Load() != 0 {
				t.Fatalf("hostile ids reached the network: %d dials, %d pools, %d proxy connections, %d negatively cached",
					st.Dials, st.PoolsCreated, proxy.accepts.Load(), st.Rejected)
			}
			// The witness works: a real tenant goes through the proxy.
			if _, err := db.ExecContext(tenantpg.WithTenant(ctx, "t01"), "select 1"); err != nil {
				t.Fatal(err)
			}
			if proxy.accepts.Load() == 0 || stats(t, db).Dials == 0 {
				t.Fatal("the proxy did not see a valid tenant's connection")
			}
		})
	}
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}

// TestUnknownTenantStorm requests a tenant the server does not know 10,000
// times from 64 goroutines while a real tenant keeps working: a burst within
// one negative-cache period dials once, and a storm spread over several
// periods dials at most once per period.
func TestUnknownTenantStorm(t *testing.T) {
	env := pgtest.Shared(t)
	tenants(t, env, 1)
	const requests, workers = 10000, 64
	for _, tc := range []struct {
		name  string
		dsn   string
		ttl   time.Duration
		pace  time.Duration // pause between one worker's requests
		route routeSpec
	}{
		{name: "burst-pgbouncer-alias", dsn: routeBouncerDB.dsn(env), ttl: 10 * time.Second, route: routeBouncerDB},
		{name: "burst-postgres-role", dsn: routeDirect.dsn(env), ttl: 10 * time.Second, route: routeDirect},
		{name: "periods-pgbouncer-alias", dsn: routeBouncerDB.dsn(env, "tenant_reject_ttl=250ms"), ttl: 250 * time.Millisecond,
			pace: 3 * time.Millisecond, route: routeBouncerDB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := newCountingProxy(t, hostAddr(t, tc.dsn))
			db := open(t, proxy.via(t, tc.dsn))
			ctx := testCtx(t)
			// The real tenant, alongside.
			stop := make(chan struct{})
			realDone := make(chan int)
			go func() {
				n := 0
				for {
					select {
					case <-stop:
						realDone <- n
						return
					default:
					}
					var s session
					err := s.scan(db.QueryRowContext(tenantpg.WithTenant(ctx, "t01"), identitySQL))
					if err == nil {
						err = tc.route.check(s, "t01", false)
					}
					if err != nil {
						t.Errorf("known tenant during the storm: %v", err)
					}
					n++
				}
			}()
			var next, uncached, cached atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			nctx := tenantpg.WithTenant(ctx, "nosuch")
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= requests {
						_, err := db.ExecContext(nctx, "select 1")
						var re *tenantpg.RejectedError
						switch {
						case !errors.As(err, &re):
							t.Errorf("unknown tenant: %v, want a *RejectedError", err)
						case re.Cached:
							cached.Add(1)
						default:
							uncached.Add(1)
						}
						if tc.pace > 0 {
							time.Sleep(tc.pace)
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			close(stop)
			realOps := <-realDone
			st := stats(t, db)
			real, _ := st.Tenant("t01")
			dials := st.Dials - real.Dials
			periods := int64(math.Ceil(float64(elapsed) / float64(tc.ttl)))
			t.Logf("%d requests in %s (negative cache %s, %d periods): %d dials for the unknown tenant, %d uncached and %d cached rejections; "+
				"proxy saw %d connections in all; the known tenant ran %d queries meanwhile",
				requests, elapsed.Round(time.Millisecond), tc.ttl, periods, dials, uncached.Load(), cached.Load(), proxy.accepts.Load(), realOps)
			if uncached.Load()+cached.Load() != requests {
				t.Fatalf("%d rejections for %d requests", uncached.Load()+cached.Load(), requests)
			}
			if dials > periods || dials < 1 {
				t.Fatalf("%d dials in %d negative-cache periods", dials, periods)
			}
			if uncached.Load() != dials {
				t.Fatalf("%d uncached rejections for %d dials", uncached.Load(), dials)
			}
			if proxy.accepts.Load() != st.Dials {
				t.Fatalf("the proxy saw %d connections, tenantpg counted %d dials", proxy.accepts.Load(), st.Dials)
			}
			if tc.pace > 0 && dials < 2 {
				t.Fatalf("%d dials over %d periods: the negative cache never expired", dials, periods)
			}
			if realOps == 0 {
				t.Fatal("the known tenant made no progress during the storm")
			}
		})
	}
}
