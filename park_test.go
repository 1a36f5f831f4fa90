package tenantpg

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
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

// An acquire marked as another pool's own (a pool hook acquiring from
// another tenant's pool with the context it was given) is native here.
func TestOwnAcquireIsPerPool(t *testing.T) {
	var clock coarseClock
	e, other := &poolEntry{clock: &clock}, &poolEntry{clock: &clock}
	rt := &releaseTracer{e: e}
	for _, c := range []struct {
		name   string
		ctx    context.Context
		native int32
	}{
		{"own", ownAcquire(context.Background(), e), 0},
		{"another pool's", ownAcquire(context.Background(), other), 1},
		{"unmarked", context.Background(), 1},
	} {
		rt.TraceAcquireStart(c.ctx, nil, pgxpool.TraceAcquireStartData{})
		if got := e.nativeAcquiring; got != c.native {
			t.Errorf("%s: %d native acquires under way, want %d", c.name, got, c.native)
		}
		rt.TraceAcquireEnd(c.ctx, nil, pgxpool.TraceAcquireEndData{})
		if got := e.nativeAcquiring; got != 0 {
			t.Errorf("%s: %d native acquires under way after the end, want 0", c.name, got)
		}
	}
}
