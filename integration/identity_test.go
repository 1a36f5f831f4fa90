package integration

import (
	"errors"
	"testing"

	"github.com/tenantpg/tenantpg"
	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestIdentityCheckCatchesWhatAPoolerDrops runs each rewrite through a
// PgBouncer that silently drops or maps it: search_path and app.tenant_id
// are in its ignore_startup_parameters (the only way PgBouncer 1.18 lets a
// client that sends them in, and then the session has neither), the alias
// tid_t01 is database app, and the alias forced logs every client in to
// the server as app. Each must fail the connection with an *IdentityError
// naming the field, unless tenant_verify leaves that field out, and then
// the session shows what the check guarded against. A Supavisor-style login
// <user>.<tenant> is accepted when the server reports <user>, and only for
// a template ending in ".{tenant}".
func TestIdentityCheckCatchesWhatAPoolerDrops(t *testing.T) {
	env := startEnv(t, pgtest.Options{
		Tenants: []string{"t01", "t01_x"},
		BouncerSettings: map[string]string{
			"ignore_startup_parameters": "extra_float_digits,search_path,app.tenant_id",
		},
		BouncerDatabases: map[string]string{
			"tid_t01": "dbname=app",
			"forced":  "dbname=app user=app",
		},
	})
	ctx := tenantpg.WithTenant(testCtx(t), "t01")
	bouncer := func(database string, params ...string) string {
		return withParams(env.BouncerURL(env.AppUser, database), append(params, "default_query_exec_mode=exec")...)
	}
	cases := []struct {
		name        string
		dsn         string
		field       string // IdentityError.Field with tenant_verify=on
		got, want   string
		verifyOther string // a tenant_verify list without field
		query, seen string // what the session says once connected without the check of field
	}{
		{
			name:  "search_path dropped",
			dsn:   bouncer(env.AppDatabase, "tenant_schema={tenant}"),
			field: "search_path", got: `"$user", public`, want: `"t01"`,
			verifyOther: "user,database,setting",
			query:       "select current_setting('search_path')", seen: `"$user", public`,
		},
		{
			name:  "setting dropped",
			dsn:   bouncer(env.AppDatabase, "tenant_setting=app.tenant_id"),
			field: "app.tenant_id", got: "", want: "t01",
			verifyOther: "user,database,schema",
			query:       "select coalesce(current_setting('app.tenant_id', true), '<unset>')", seen: "<unset>",
		},
		{
			name:  "alias maps to another database",
			dsn:   bouncer(env.AppDatabase, "tenant_database=tid_{tenant}"),
			field: "database", got: env.AppDatabase, want: "tid_t01",
			verifyOther: "user,schema,setting",
			query:       "select current_database()", seen: env.AppDatabase,
		},
		{
			name:  "login mapped, template not ending in .{tenant}",
			dsn:   bouncer("forced", "tenant_user={user}.{tenant}_x"),
			field: "user", got: env.AppUser, want: "app.t01_x",
			verifyOther: "schema,setting", // the alias forced is database app too
			query:       "select current_user", seen: env.AppUser,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := open(t, c.dsn)
			_, err := db.ExecContext(ctx, "select 1")
			var ie *tenantpg.IdentityError
			if !errors.As(err, &ie) || !errors.Is(err, tenantpg.ErrIdentityMismatch) {
				t.Fatalf("err = %v, want an *IdentityError", err)
			}
			if ie.Tenant != "t01" || ie.Field != c.field || ie.Got != c.got || ie.Want != c.want {
				t.Fatalf("IdentityError %+v, want field %q got %q want %q", ie, c.field, c.got, c.want)
			}
			if st := stats(t, db); st.OpenConns != 0 {
				t.Fatalf("%d connections open after the failed check", st.OpenConns)
			}

			// The list without the field connects, and the session is
			// what the check would have refused.
			db = open(t, withParams(c.dsn, "tenant_verify="+c.verifyOther))
			if got, err := queryString(ctx, db, c.query); err != nil || got != c.seen {
				t.Fatalf("tenant_verify=%s: %q, %v; want %q", c.verifyOther, got, err, c.seen)
			}
		})
	}

	// Supavisor logs in upstream as the plain user: for a template ending
	// in ".{tenant}" the user check accepts current_user app for the login
	// app.t01 (PgBouncer's forced user does the same here). The database
	// check is off: the alias forced is database app.
	t.Run("pooler login accepted", func(t *testing.T) {
		db := open(t, bouncer("forced", "tenant_user={user}.{tenant}", "tenant_verify=user,schema,setting"))
		if got, err := queryString(ctx, db, "select current_user"); err != nil || got != env.AppUser {
			t.Fatalf("current_user %q, %v; want %q with the user check on", got, err, env.AppUser)
		}
	})
}
