package sqlcdb

// Doc is a row of public.docs (row-level security on app.tenant_id).
type Doc struct {
	ID       int32
	TenantID string
	Body     string
}

// Item is a row of items.
type Item struct {
	ID     int32
	Tenant string
	Val    int32
}
