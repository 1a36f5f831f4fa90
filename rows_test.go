package tenantpg

import (
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// The scan cache keeps the plans of the last scanPlans column types and
// formats, replacing the oldest, and a hit plans nothing.
func TestScanCacheKeepsTheLastPlans(t *testing.T) {
	m := pgtype.NewMap()
	c := new(scanCache)
	const n = scanPlans + 4
	for oid := uint32(1); oid <= n; oid++ {
		c.planFor(m, oid, pgtype.TextFormatCode)
	}
	if c.next != n {
		t.Fatalf("next = %d after %d misses", c.next, n)
	}
	for oid := uint32(1); oid <= n; oid++ {
		held := false
		for _, k := range c.keys {
			held = held || k == planKey(oid, pgtype.TextFormatCode)
		}
		if want := oid > n-scanPlans; held != want {
			t.Errorf("oid %d: in the cache %v, want %v", oid, held, want)
		}
	}
	c.planFor(m, n, pgtype.TextFormatCode)
	if c.next != n {
		t.Fatalf("a hit made a plan: next = %d", c.next)
	}
	c.planFor(m, n, pgtype.BinaryFormatCode) // another format is another plan
	if c.next != n+1 {
		t.Fatalf("next = %d after a miss in another format", c.next)
	}
}

// Values have stdlib's Go types, []byte values never share memory with
// the row or with each other, and the cache keeps no []byte or string.
func TestScanCacheValues(t *testing.T) {
	m := pgtype.NewMap()
	c := new(scanCache)
	value := func(oid uint32, format int16, src []byte) any {
		t.Helper()
		p := c.planFor(m, oid, format)
		v, err := c.value(&p, src)
		if err != nil {
			t.Fatalf("oid %d: %v", oid, err)
		}
		return v
	}
	if v := value(pgtype.Int4OID, pgtype.BinaryFormatCode, []byte{0, 0, 0, 7}); v != int64(7) {
		t.Errorf("int4: %T %v, want int64 7", v, v)
	}
	if v := value(pgtype.Int2OID, pgtype.TextFormatCode, []byte("-3")); v != int64(-3) {
		t.Errorf("int2 as text: %T %v, want int64 -3", v, v)
	}
	if v := value(pgtype.Float4OID, pgtype.BinaryFormatCode, []byte{0x3f, 0xc0, 0, 0}); v != float64(1.5) {
		t.Errorf("float4: %T %v, want float64 1.5", v, v)
	}
	if v := value(pgtype.NumericOID, pgtype.TextFormatCode, []byte("12.50")); v != "12.50" {
		t.Errorf("numeric: %T %v, want the string 12.50", v, v)
	}
	src := []byte{1, 2, 3}
	a := value(pgtype.ByteaOID, pgtype.BinaryFormatCode, src).([]byte)
	b := value(pgtype.ByteaOID, pgtype.BinaryFormatCode, src).([]byte)
	src[0] = 9
	if a[0] != 1 || b[0] != 1 || &a[0] == &b[0] {
		t.Errorf("bytea values share memory: %v %v", a, b)
	}
	if c.by != nil || c.s != "" {
		t.Errorf("the cache keeps the last value: %v %q", c.by, c.s)
	}
}
