package tenantpg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// checkIdentity verifies, once per new physical connection, that the session
// is the tenant's: a pooler that silently dropped a startup parameter or
// mapped the login elsewhere becomes an error instead of a cross-tenant read.
// A login "<role>.<tenant>" from a tenant_user template ending in
// ".{tenant}" may also report current_user <role>: Supavisor takes the tenant
// from the suffix and logs in upstream as <role>, so for it the user check
// proves the role, and the tenant is the pooler's routing. The query runs in
// exec mode, which every pooler mode accepts.
func checkIdentity(ctx context.Context, conn *pgx.Conn, tenant string, want identity, vs verifySet) error {
	if !vs.user && !vs.database && !vs.schema && !vs.setting {
		return nil
	}
	var user, database, searchPath, setting string
	var err error
	if want.setting != "" {
		var v *string
		err = conn.QueryRow(ctx,
			"select current_user::text, current_database()::text, current_setting('search_path'), current_setting($1, true)",
			pgx.QueryExecModeExec, want.setting).Scan(&user, &database, &searchPath, &v)
		if v != nil {
			setting = *v
		}
	} else {
		err = conn.QueryRow(ctx,
			"select current_user::text, current_database()::text, current_setting('search_path')",
			pgx.QueryExecModeExec).Scan(&user, &database, &searchPath)
	}
	if err != nil {
		return fmt.Errorf("tenantpg: identity check for tenant %q: %w", tenant, err)
	}
	switch {
	case vs.user && user != want.user && (want.poolerUser == "" || user != want.poolerUser):
		return &IdentityError{Tenant: tenant, Field: "user", Got: user, Want: want.user}
	case vs.database && database != want.database:
		return &IdentityError{Tenant: tenant, Field: "database", Got: database, Want: want.database}
	case vs.schema && want.searchPath != "" && searchPath != want.searchPath:
		return &IdentityError{Tenant: tenant, Field: "search_path", Got: searchPath, Want: want.searchPath}
	case vs.setting && want.setting != "" && setting != want.settingValue:
		return &IdentityError{Tenant: tenant, Field: want.setting, Got: setting, Want: want.settingValue}
	}
	return nil
}
