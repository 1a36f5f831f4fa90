package tenantpg

import (
	"testing"
	"time"
)

// A connection goes back to pgxpool after the pool's lifetime when that is
// shorter than holdMax, after holdMax otherwise (also without a lifetime).
func TestHoldFor(t *testing.T) {
	for _, c := range []struct{ lifetime, want time.Duration }{
		{0, holdMax},
		{-time.Second, holdMax},
		{250 * time.Millisecond, 250 * time.Millisecond},
		{holdMax, holdMax},
		{time.Hour, holdMax}, // pgxpool's default
	} {
		if got := holdFor(c.lifetime); got != c.want {
			t.Errorf("holdFor(%v) = %v, want %v", c.lifetime, got, c.want)
		}
	}
}
