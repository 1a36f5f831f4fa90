package pgtest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// provisionLockKey is the advisory lock serialising Provision calls across
// processes sharing an external server.
const provisionLockKey = 0x74656e616e74 // "tenant"

// tenantWorkers bounds the concurrent per-tenant-database connections.
const tenantWorkers = 8

// tenantRE is the accepted tenant id syntax.
var tenantRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// reservedTenants collide with databases, schemas or roles of the harness.
var reservedTenants = map[string]bool{
	"app": true, "postgres": true, "template0": true, "template1": true,
	"pgbouncer": true, "public": true, "information_schema": true,
}

// ValidateTenant reports whether id can be used as a tenant id: lower-case
// ASCII letters, digits, '_' and '-', at most 59 bytes (so that "app.<id>"
// fits in a PostgreSQL name), not starting with "pg_" and not one of the
// names the harness uses itself (app, postgres, template0, template1,
// pgbouncer, public, information_schema).
func ValidateTenant(id string) error {
	switch {
	case !tenantRE.MatchString(id):
		return fmt.Errorf("pgtest: invalid tenant id %q: want lower-case ASCII letters, digits, '_' or '-'", id)
	case len(id) > 59:
		return fmt.Errorf("pgtest: tenant id %q longer than 59 bytes", id)
	case strings.HasPrefix(id, "pg_") || reservedTenants[id]:
		return fmt.Errorf("pgtest: tenant id %q is reserved", id)
	}
	return nil
}

// TenantRole returns the login role of a tenant, "app.<tenant>".
func TenantRole(tenant string) string { return DefaultAppUser + "." + tenant }

// provisioner creates the tenant objects of one server.
type provisioner struct {
	s    *Server
	mu   sync.Mutex
	done map[string]bool // tenants fully provisioned by this process
}

// init binds the provisioner to its server.
func (p *provisioner) init(s *Server) {
	p.s = s
	p.done = map[string]bool{}
}

// forget drops the in-process record of provisioned tenants so the next
// Provision re-runs every (idempotent) statement; for tests of the harness.
func (p *provisioner) forget() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = map[string]bool{}
}

// Provision creates the roles, databases, schemas, tables and rows of the
// given tenants (see the package documentation). It is idempotent and safe
// for concurrent use, also across processes sharing an external server;
// tenants already provisioned by this process are skipped cheaply.
func (s *Server) Provision(ctx context.Context, tenants ...string) error {
	return s.prov.provision(ctx, tenants)
}

// provision implements Server.Provision.
func (p *provisioner) provision(ctx context.Context, tenants []string) error {
	seen := map[string]bool{}
	var todo []string
	for _, t := range tenants {
		if err := ValidateTenant(t); err != nil {
			return err
		}
		if !seen[t] {
			seen[t] = true
			todo = append(todo, t)
		}
	}
	sort.Strings(todo)

	p.mu.Lock()
	defer p.mu.Unlock()
	pending := todo[:0]
	for _, t := range todo {
		if !p.done[t] {
			pending = append(pending, t)
		}
	}
	if len(pending) == 0 && p.done[""] {
		return nil
	}
	if err := p.run(ctx, pending); err != nil {
		return fmt.Errorf("pgtest: provision: %w", err)
	}
	p.done[""] = true // the shared objects (app role, app database, docs)
	for _, t := range pending {
		p.done[t] = true
	}
	return nil
}

// run provisions tenants while holding the cross-process advisory lock.
func (p *provisioner) run(ctx context.Context, tenants []string) error {
	s := p.s
	maint, err := s.connect(ctx, s.SuperUser, s.maintDB)
	if err != nil {
		return err
	}
	defer maint.Close(context.Background())
	if _, err := maint.Exec(ctx, "select pg_advisory_lock($1)", int64(provisionLockKey)); err != nil {
		return err
	}
	// The lock is released when maint is closed.
	if _, err := maint.Exec(ctx, "set password_encryption = 'scram-sha-256'"); err != nil {
		return err
	}

	// Roles.
	roles := []string{s.AppUser}
	for _, t := range tenants {
		roles = append(roles, TenantRole(t))
	}
	existing, err := queryStrings(ctx, maint, "select rolname from pg_roles where rolname = any($1)", roles)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, r := range roles {
		verb := "create"
		if existing[r] {
			if r == s.AppUser && p.done[""] {
				continue
			}
			verb = "alter"
		}
		fmt.Fprintf(&b, "%s role %s login nosuperuser nobypassrls nocreatedb nocreaterole password %s;\n",
			verb, ident(r), quoteLiteral(s.AppPassword))
	}
	if err := execSimple(ctx, maint, b.String()); err != nil {
		return err
	}

	// The shared database; CREATE DATABASE cannot run in a transaction
	// block, so it is always a statement of its own.
	existing, err = queryStrings(ctx, maint, "select datname from pg_database where datname = any($1)",
		append([]string{s.AppDatabase}, tenants...))
	if err != nil {
		return err
	}
	if !existing[s.AppDatabase] {
		if err := execSimple(ctx, maint, fmt.Sprintf("create database %s owner %s",
			ident(s.AppDatabase), ident(s.AppUser))); err != nil {
			return err
		}
	}
	b.Reset()
	for _, t := range tenants {
		fmt.Fprintf(&b, "grant connect, create, temporary on database %s to %s;\n", ident(s.AppDatabase), ident(TenantRole(t)))
	}
	if err := execSimple(ctx, maint, b.String()); err != nil {
		return err
	}
	var version int
	if err := maint.QueryRow(ctx, "select current_setting('server_version_num')::int").Scan(&version); err != nil {
		return err
	}
	strategy := ""
	if version >= 150000 {
		// Faster than the default WAL_LOG for small databases.
		strategy = " strategy file_copy"
	}

	// The shared database and the tenant databases are independent: fill
	// them concurrently. CREATE DATABASE is the slow part (~0.1 s each), so
	// several connections create databases in parallel.
	jobs := make(chan string)
	errc := make(chan error, tenantWorkers+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- p.provisionAppDatabase(ctx, tenants)
	}()
	workers := min(tenantWorkers, len(tenants))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- p.tenantWorker(ctx, jobs, existing, strategy)
		}()
	}
	var sendErr error
	for _, t := range tenants {
		select {
		case jobs <- t:
		case <-ctx.Done():
			sendErr = ctx.Err()
		}
		if sendErr != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	close(errc)
	errs := []error{sendErr}
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tenantWorker creates and fills the tenant databases it receives, using
// one maintenance connection of its own. After an error it drains jobs.
func (p *provisioner) tenantWorker(ctx context.Context, jobs <-chan string, existing map[string]bool, strategy string) error {
	s := p.s
	maint, err := s.connect(ctx, s.SuperUser, s.maintDB)
	if err != nil {
		for range jobs {
		}
		return err
	}
	defer maint.Close(context.Background())
	for t := range jobs {
		if err != nil {
			continue
		}
		if !existing[t] {
			err = execSimple(ctx, maint, fmt.Sprintf("create database %s owner %s%s",
				ident(t), ident(TenantRole(t)), strategy))
			if err != nil {
				err = fmt.Errorf("create database %s: %w", t, err)
				continue
			}
		}
		err = execSimple(ctx, maint, fmt.Sprintf("grant connect, temporary on database %s to %s",
			ident(t), ident(s.AppUser)))
		if err == nil {
			err = p.provisionTenantDatabase(ctx, t)
		}
		if err != nil {
			err = fmt.Errorf("tenant %s: %w", t, err)
		}
	}
	return err
}

// provisionAppDatabase creates public.docs and the tenant schemas in the
// shared database.
func (p *provisioner) provisionAppDatabase(ctx context.Context, tenants []string) error {
	s := p.s
	conn, err := s.connect(ctx, s.SuperUser, s.AppDatabase)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	app := ident(s.AppUser)
	var b strings.Builder
	if !p.done[""] {
		b.WriteString(`
create table if not exists public.docs (
	id serial primary key,
	tenant_id text not null,
	body text not null
);
alter table public.docs enable row level security;
alter table public.docs force row level security;
do $$
begin
	if not exists (select from pg_policies where schemaname = 'public' and tablename = 'docs' and policyname = 'docs_tenant') then
		create policy docs_tenant on public.docs
			using (tenant_id = current_setting('app.tenant_id', true))
			with check (tenant_id = current_setting('app.tenant_id', true));
	end if;
end
$$;
`)
		fmt.Fprintf(&b, "grant all on table public.docs to %s;\n", app)
		fmt.Fprintf(&b, "grant all on sequence public.docs_id_seq to %s;\n", app)
	}
	for _, t := range tenants {
		schema, role, lit := ident(t), ident(TenantRole(t)), quoteLiteral(t)
		items := pgx.Identifier{t, "items"}.Sanitize()
		seq := pgx.Identifier{t, "items_id_seq"}.Sanitize()
		fmt.Fprintf(&b, "create schema if not exists %s authorization %s;\n", schema, role)
		fmt.Fprintf(&b, "alter schema %s owner to %s;\n", schema, role)
		fmt.Fprintf(&b, "create table if not exists %s (id serial primary key, tenant text not null, val int not null);\n", items)
		fmt.Fprintf(&b, "alter table %s owner to %s;\n", items, role)
		fmt.Fprintf(&b, "insert into %s (tenant, val) select %s, v from generate_series(1, 3) v where not exists (select from %s);\n", items, lit, items)
		fmt.Fprintf(&b, "grant all on schema %s to %s;\n", schema, app)
		fmt.Fprintf(&b, "grant select, insert, update, delete on table %s to %s;\n", items, app)
		fmt.Fprintf(&b, "grant usage, select, update on sequence %s to %s;\n", seq, app)
		fmt.Fprintf(&b, "grant all on table public.docs to %s;\n", role)
		fmt.Fprintf(&b, "grant all on sequence public.docs_id_seq to %s;\n", role)
		fmt.Fprintf(&b, "insert into public.docs (tenant_id, body) select %s, 'doc ' || v || ' of ' || %s from generate_series(1, 2) v where not exists (select from public.docs where tenant_id = %s);\n", lit, lit, lit)
	}
	return execSimple(ctx, conn, b.String())
}

// provisionTenantDatabase fills the database named after the tenant.
func (p *provisioner) provisionTenantDatabase(ctx context.Context, t string) error {
	s := p.s
	conn, err := s.connect(ctx, s.SuperUser, t)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	app, role, lit := ident(s.AppUser), ident(TenantRole(t)), quoteLiteral(t)
	var b strings.Builder
	b.WriteString("create table if not exists public.items (id serial primary key, tenant text not null, val int not null);\n")
	fmt.Fprintf(&b, "alter table public.items owner to %s;\n", role)
	fmt.Fprintf(&b, "insert into public.items (tenant, val) select %s, v from generate_series(1, 3) v where not exists (select from public.items);\n", lit)
	fmt.Fprintf(&b, "grant select, insert, update, delete on table public.items to %s;\n", app)
	fmt.Fprintf(&b, "grant usage, select, update on sequence public.items_id_seq to %s;\n", app)
	return execSimple(ctx, conn, b.String())
}

// execSimple runs one or more statements with the simple query protocol
// (several statements run in one implicit transaction).
func execSimple(ctx context.Context, conn *pgx.Conn, sql string) error {
	if strings.TrimSpace(sql) == "" {
		return nil
	}
	_, err := conn.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

// queryStrings returns the set of first-column values of a query.
func queryStrings(ctx context.Context, conn *pgx.Conn, sql string, args ...any) (map[string]bool, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return set, nil
}

// ident quotes an SQL identifier.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, "\x00", ""), "'", "''") + "'"
}
