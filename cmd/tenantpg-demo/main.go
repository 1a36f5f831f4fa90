// Command tenantpg-demo starts a throwaway PostgreSQL and PgBouncer, provisions
// a few tenants and runs a small concurrent app through tenantpg with GORM and
// sqlx over two routes: a Supavisor-style login "app.<tenant>" and a PgBouncer
// database alias per tenant. It prints what the server saw for each tenant,
// checks that no tenant saw another's rows or sessions, and leaves nothing
// running.
//
//	make demo   (or: cd cmd/tenantpg-demo && go run .)
//
// It is a module of its own so that GORM and sqlx stay out of the library's
// go.mod.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// sqlx picks placeholders by driver name and does not know "tenantpg".
func init() { sqlx.BindDriver(tenantpg.DriverName, sqlx.DOLLAR) }

func main() {
	workers := flag.Int("workers", 16, "concurrent workers per route")
	ops := flag.Int("ops", 2000, "operations per route (half GORM, half sqlx)")
	flag.Parse()
	if err := run(os.Stdout, *workers, *ops); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

var tenantIDs = []string{"acme", "globex", "initech", "umbrella"}

// route is one way of reaching the tenants through PgBouncer.
type route struct {
	name     string
	dsn      string
	table    func(tenant string) string // the tenant's items table on this route
	login    func(tenant string) string // the login the server must see
	database func(tenant string) string // the database the server must see
}

// item is a row of the tenants' items tables.
type item struct {
	ID     int64  `db:"id"`
	Tenant string `db:"tenant"`
	Val    int    `db:"val"`
}

// tally counts what one tenant did on one route.
type tally struct {
	reads                  atomic.Int64
	gormWrites, sqlxWrites atomic.Int64
	foreign                atomic.Int64 // rows or sessions of another tenant seen (must stay 0)
	user, db               atomic.Value
}

func run(out io.Writer, workers, ops int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	fmt.Fprintln(out, "tenantpg demo: starting a throwaway PostgreSQL and PgBouncer ...")
	start := time.Now()
	env, err := pgtest.Start(ctx, pgtest.Options{Tenants: tenantIDs, PoolSize: 10})
	if err != nil {
		return fmt.Errorf("starting servers: %w", err)
	}
	defer env.Close()
	fmt.Fprintf(out, "  PostgreSQL on 127.0.0.1:%d, PgBouncer (transaction pooling) on 127.0.0.1:%d, tenants %v, ready in %s\n",
		env.PGPort, env.BouncerPort, tenantIDs, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "  app: each operation is one transaction, by GORM or by sqlx in turn: whoami, insert a row, read the tenant's table\n\n")

	base := env.BouncerURL(env.AppUser, env.AppDatabase)
	routes := []route{
		{
			name:     "Supavisor-style login (tenant_user={user}.{tenant})",
			dsn:      base + "&tenant_user={user}.{tenant}&tenant_max_conns=12&pool_max_conns=3",
			table:    func(t string) string { return t + ".items" },
			login:    pgtest.TenantRole,
			database: func(string) string { return env.AppDatabase },
		},
		{
			name:     "PgBouncer alias per tenant (tenant_database={tenant})",
			dsn:      base + "&tenant_database={tenant}&tenant_max_conns=12&pool_max_conns=3",
			table:    func(string) string { return "public.items" },
			login:    func(string) string { return env.AppUser },
			database: func(t string) string { return t },
		},
	}
	ok := true
	for _, r := range routes {
		good, err := runRoute(ctx, out, r, workers, ops)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		ok = ok && good
	}
	if err := env.Close(); err != nil {
		return fmt.Errorf("stopping servers: %w", err)
	}
	if !ok {
		return errors.New("a tenant saw another tenant's rows or session")
	}
	fmt.Fprintln(out, "every tenant saw only its own rows and sessions; servers stopped, nothing left running.")
	return nil
}

func runRoute(ctx context.Context, out io.Writer, r route, workers, ops int) (bool, error) {
	db, err := sql.Open("tenantpg", r.dsn)
	if err != nil {
		return false, err
	}
	defer db.Close()
	db.SetMaxIdleConns(tenantpg.IdleHandles) // idle handles hold no connection

	// gorm.Open pings without a tenant: tenantpg answers that ping without
	// a connection. Every query then needs WithContext(tenant context).
	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return false, fmt.Errorf("gorm.Open: %w", err)
	}
	xdb := sqlx.NewDb(db, tenantpg.DriverName)

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
			for {
				i := next.Add(1)
				if i > int64(ops) {
					return
				}
				t := tenantIDs[rand.IntN(len(tenantIDs))]
				tctx := tenantpg.WithTenant(ctx, t)
				var err error
				if i%2 == 0 {
					err = workGORM(tctx, gdb, r, t, tallies[t])
				} else {
					err = workSqlx(tctx, xdb, r, t, tallies[t])
				}
				if err != nil {
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
	fmt.Fprintf(out, "%s\n  %d operations by %d workers in %s (%.0f ops/s), %d physical connections opened, peak %d of budget %d\n",
		r.name, ops, workers, elapsed.Round(time.Millisecond), float64(ops)/elapsed.Seconds(), st.Dials, st.PeakConns, st.MaxConns)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  tenant\tserver login\tserver database\trows read\trows written (GORM+sqlx)\tconns opened\tcheckouts reused\tcross-tenant check")
	good := true
	for _, t := range tenantIDs {
		tl := tallies[t]
		opened, reused := int64(0), int64(0)
		if p, found := st.Tenant(t); found {
			opened = p.Dials
			reused = p.Checkouts - opened
		}
		check := "ok: 0 foreign rows"
		if n := tl.foreign.Load(); n != 0 {
			check = fmt.Sprintf("FAILED: %d foreign rows or sessions", n)
			good = false
		}
		g, x := tl.gormWrites.Load(), tl.sqlxWrites.Load()
		fmt.Fprintf(tw, "  %s\t%v\t%v\t%d\t%d (%d+%d)\t%d\t%d\t%s\n", t, tl.user.Load(), tl.db.Load(),
			tl.reads.Load(), g+x, g, x, opened, reused, check)
	}
	tw.Flush()
	fmt.Fprintln(out)
	return good, nil
}

// saw records the session the server reported and whether it is the
// tenant's.
func (tl *tally) saw(r route, tenant, user, dbname string) {
	tl.user.Store(user)
	tl.db.Store(dbname)
	if user != r.login(tenant) || dbname != r.database(tenant) {
		tl.foreign.Add(1)
	}
}

// owners counts the rows read and those of other tenants.
func (tl *tally) owners(tenant string, owners []string) {
	tl.reads.Add(int64(len(owners)))
	for _, o := range owners {
		if o != tenant {
			tl.foreign.Add(1)
		}
	}
}

// workGORM is one operation through GORM: a transaction that asks the
// server who it is, writes one row for the tenant and reads its table back.
func workGORM(ctx context.Context, db *gorm.DB, r route, tenant string, tl *tally) error {
	return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var user, dbname string
		if err := tx.Raw("select current_user, current_database()").Row().Scan(&user, &dbname); err != nil {
			return err
		}
		tl.saw(r, tenant, user, dbname)
		if err := tx.Table(r.table(tenant)).Create(&item{Tenant: tenant, Val: rand.IntN(1000)}).Error; err != nil {
			return err
		}
		tl.gormWrites.Add(1)
		var owners []string
		if err := tx.Table(r.table(tenant)).Pluck("tenant", &owners).Error; err != nil {
			return err
		}
		tl.owners(tenant, owners)
		return nil
	})
}

// workSqlx is the same operation through sqlx.
func workSqlx(ctx context.Context, db *sqlx.DB, r route, tenant string, tl *tally) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var who struct {
		User string `db:"current_user"`
		DB   string `db:"current_database"`
	}
	if err := tx.GetContext(ctx, &who, "select current_user, current_database()"); err != nil {
		return err
	}
	tl.saw(r, tenant, who.User, who.DB)
	if _, err := tx.ExecContext(ctx, tx.Rebind("insert into "+r.table(tenant)+" (tenant, val) values (?, ?)"), tenant, rand.IntN(1000)); err != nil {
		return err
	}
	tl.sqlxWrites.Add(1)
	var owners []string
	if err := tx.SelectContext(ctx, &owners, "select tenant from "+r.table(tenant)); err != nil {
		return err
	}
	tl.owners(tenant, owners)
	return tx.Commit()
}
