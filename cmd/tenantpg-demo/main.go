// Command tenantpg-demo starts a throwaway PostgreSQL and PgBouncer, provisions
// a few tenants and runs a small concurrent app through tenantpg over two
// routes: a Supavisor-style login "app.<tenant>" and a PgBouncer database
// alias per tenant. It prints what the server saw for each tenant, checks
// that no tenant saw another's rows, and leaves nothing running.
//
//	make demo   (or: go run ./cmd/tenantpg-demo)
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

func main() {
	workers := flag.Int("workers", 16, "concurrent workers per route")
	ops := flag.Int("ops", 2000, "operations per route")
	flag.Parse()
	if err := run(*workers, *ops); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

var tenantIDs = []string{"acme", "globex", "initech", "umbrella"}

// route is one way of reaching the tenants through PgBouncer.
type route struct {
	name  string
	dsn   string
	table func(tenant string) string // the tenant's items table as seen on this route
}

// tally counts what one tenant did on one route.
type tally struct {
	reads, writes atomic.Int64
	foreign       atomic.Int64 // rows of another tenant seen (must stay 0)
	user, db      atomic.Value
}

func run(workers, ops int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	fmt.Println("tenantpg demo: starting a throwaway PostgreSQL and PgBouncer ...")
	start := time.Now()
	env, err := pgtest.Start(ctx, pgtest.Options{Tenants: tenantIDs, PoolSize: 10})
	if err != nil {
		return fmt.Errorf("starting servers: %w", err)
	}
	defer env.Close()
	fmt.Printf("  PostgreSQL on 127.0.0.1:%d, PgBouncer (transaction pooling) on 127.0.0.1:%d, tenants %v, ready in %s\n\n",
		env.PGPort, env.BouncerPort, tenantIDs, time.Since(start).Round(time.Millisecond))

	base := env.BouncerURL(env.AppUser, env.AppDatabase)
	routes := []route{
		{
			name:  "Supavisor-style login (tenant_user={user}.{tenant})",
			dsn:   base + "&tenant_user={user}.{tenant}&tenant_max_conns=12&pool_max_conns=3",
			table: func(t string) string { return pgx.Identifier{t, "items"}.Sanitize() },
		},
		{
			name:  "PgBouncer alias per tenant (tenant_database={tenant})",
			dsn:   base + "&tenant_database={tenant}&tenant_max_conns=12&pool_max_conns=3",
			table: func(string) string { return "public.items" },
		},
	}
	ok := true
	for _, r := range routes {
		good, err := runRoute(ctx, r, workers, ops)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		ok = ok && good
	}
	if !ok {
		return errors.New("a tenant saw another tenant's rows")
	}
	fmt.Println("every tenant saw only its own rows; servers stopped, nothing left running.")
	return nil
}

func runRoute(ctx context.Context, r route, workers, ops int) (bool, error) {
	db, err := sql.Open("tenantpg", r.dsn)
	if err != nil {
		return false, err
	}
	defer db.Close()
	db.SetMaxIdleConns(0) // all pooling in tenantpg

	// The ORM-style setup ping works without a tenant.
	if err := db.PingContext(ctx); err != nil {
		return false, err
	}
	tallies := map[string]*tally{}
	for _, t := range tenantIDs {
		tallies[t] = &tally{}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errCh := make(chan error, workers)
	began := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(ops) {
				t := tenantIDs[rand.IntN(len(tenantIDs))]
				if err := work(tenantpg.WithTenant(ctx, t), db, r.table(t), t, tallies[t]); err != nil {
					errCh <- fmt.Errorf("tenant %s: %w", t, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errCh)
	if err := <-errCh; err != nil {
		return false, err
	}
	elapsed := time.Since(began)

	st, err := tenantpg.DBStats(db)
	if err != nil {
		return false, err
	}
	fmt.Printf("%s\n  %d operations by %d workers in %s (%.0f ops/s), %d physical connections opened, peak %d of budget %d\n",
		r.name, ops, workers, elapsed.Round(time.Millisecond), float64(ops)/elapsed.Seconds(), st.Dials, st.PeakConns, st.MaxConns)
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  tenant\tserver login\tserver database\trows read\trows written\tconns opened\tcheckouts reused\tcross-tenant check")
	good := true
	for _, t := range tenantIDs {
		tl := tallies[t]
		opened, reused := int64(0), int64(0)
		if p, found := st.Tenant(t); found {
			opened = p.Dials
			reused = p.Pool.AcquireCount() - opened
		}
		check := "ok: 0 foreign rows"
		if n := tl.foreign.Load(); n != 0 {
			check = fmt.Sprintf("FAILED: %d foreign rows", n)
			good = false
		}
		fmt.Fprintf(tw, "  %s\t%v\t%v\t%d\t%d\t%d\t%d\t%s\n", t, tl.user.Load(), tl.db.Load(),
			tl.reads.Load(), tl.writes.Load(), opened, reused, check)
	}
	tw.Flush()
	fmt.Println()
	return good, nil
}

// work writes one row for the tenant and reads all of its table back in one
// transaction, recording what the server says about the session.
func work(ctx context.Context, db *sql.DB, table, tenant string, tl *tally) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var user, dbname string
	if err := tx.QueryRowContext(ctx, "select current_user, current_database()").Scan(&user, &dbname); err != nil {
		return err
	}
	tl.user.Store(user)
	tl.db.Store(dbname)
	if _, err := tx.ExecContext(ctx, "insert into "+table+" (tenant, val) values ($1, $2)", tenant, rand.IntN(1000)); err != nil {
		return err
	}
	tl.writes.Add(1)
	rows, err := tx.QueryContext(ctx, "select tenant from "+table)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var owner string
		if err := rows.Scan(&owner); err != nil {
			return err
		}
		tl.reads.Add(1)
		if owner != tenant {
			tl.foreign.Add(1)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return tx.Commit()
}
