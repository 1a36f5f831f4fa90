package tenantpg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// releaseTracer hands connections to budget waiters. pgxpool calls
// TraceRelease before it decides to keep a released connection; when a
// tenant with fewer connections waits for a slot (see budget.shouldYield),
// closing the connection there makes pgxpool drop it, its socket returns the
// slot and that waiter gets it. Without this a hot tenant's released
// connections would go straight to its own next acquirer and other tenants
// would starve. It forwards every pgx tracer call to the
// user's tracer, if any.
type releaseTracer struct {
	inner pgx.QueryTracer
	b     *budget
	e     *poolEntry
}

var (
	_ pgx.QueryTracer       = (*releaseTracer)(nil)
	_ pgx.BatchTracer       = (*releaseTracer)(nil)
	_ pgx.CopyFromTracer    = (*releaseTracer)(nil)
	_ pgx.PrepareTracer     = (*releaseTracer)(nil)
	_ pgx.ConnectTracer     = (*releaseTracer)(nil)
	_ pgxpool.AcquireTracer = (*releaseTracer)(nil)
	_ pgxpool.ReleaseTracer = (*releaseTracer)(nil)
)

// queriesUntraced reports whether t, a connection's tracer, traces no
// queries: it is nil, tenantpg's namedStatements, or tenantpg's
// releaseTracer around nothing.
func queriesUntraced(t pgx.QueryTracer) bool {
	switch t := t.(type) {
	case *releaseTracer:
		return t.inner == nil
	case namedStatements:
		return true
	}
	return t == nil
}

func (t *releaseTracer) TraceRelease(pool *pgxpool.Pool, data pgxpool.TraceReleaseData) {
	if r, ok := t.inner.(pgxpool.ReleaseTracer); ok {
		r.TraceRelease(pool, data)
	}
	// A release that is not tenantpg's ends pgx-native use of the
	// connection (Acquire, AcquireAllIdle, ...): its statements may be
	// gone (connState.unsure).
	if st := stateOf(data.Conn); st.ownRelease {
		st.ownRelease = false
	} else {
		st.markUnsure()
	}
	if t.b.max > 0 && !data.Conn.IsClosed() && t.b.shouldYield(t.e) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = data.Conn.Close(ctx)
		cancel()
		t.b.closeOnWait.Add(1)
		t.e.handedOff.Add(1)
	}
}

func (t *releaseTracer) TraceQueryStart(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if t.inner != nil {
		return t.inner.TraceQueryStart(ctx, c, d)
	}
	return ctx
}

func (t *releaseTracer) TraceQueryEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryEndData) {
	if t.inner != nil {
		t.inner.TraceQueryEnd(ctx, c, d)
	}
}

func (t *releaseTracer) TraceBatchStart(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	if i, ok := t.inner.(pgx.BatchTracer); ok {
		return i.TraceBatchStart(ctx, c, d)
	}
	return ctx
}

func (t *releaseTracer) TraceBatchQuery(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchQueryData) {
	if i, ok := t.inner.(pgx.BatchTracer); ok {
		i.TraceBatchQuery(ctx, c, d)
	}
}

func (t *releaseTracer) TraceBatchEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchEndData) {
	if i, ok := t.inner.(pgx.BatchTracer); ok {
		i.TraceBatchEnd(ctx, c, d)
	}
}

func (t *releaseTracer) TraceCopyFromStart(ctx context.Context, c *pgx.Conn, d pgx.TraceCopyFromStartData) context.Context {
	if i, ok := t.inner.(pgx.CopyFromTracer); ok {
		return i.TraceCopyFromStart(ctx, c, d)
	}
	return ctx
}

func (t *releaseTracer) TraceCopyFromEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceCopyFromEndData) {
	if i, ok := t.inner.(pgx.CopyFromTracer); ok {
		i.TraceCopyFromEnd(ctx, c, d)
	}
}

func (t *releaseTracer) TracePrepareStart(ctx context.Context, c *pgx.Conn, d pgx.TracePrepareStartData) context.Context {
	if i, ok := t.inner.(pgx.PrepareTracer); ok {
		return i.TracePrepareStart(ctx, c, d)
	}
	return ctx
}

func (t *releaseTracer) TracePrepareEnd(ctx context.Context, c *pgx.Conn, d pgx.TracePrepareEndData) {
	if i, ok := t.inner.(pgx.PrepareTracer); ok {
		i.TracePrepareEnd(ctx, c, d)
	}
}

func (t *releaseTracer) TraceConnectStart(ctx context.Context, d pgx.TraceConnectStartData) context.Context {
	if i, ok := t.inner.(pgx.ConnectTracer); ok {
		return i.TraceConnectStart(ctx, d)
	}
	return ctx
}

func (t *releaseTracer) TraceConnectEnd(ctx context.Context, d pgx.TraceConnectEndData) {
	if i, ok := t.inner.(pgx.ConnectTracer); ok {
		i.TraceConnectEnd(ctx, d)
	}
}

// TraceAcquireStart and TraceAcquireEnd see pgx-native acquires (those
// without the pool's own marker): while one is under way, releases go to
// pgxpool (see nativeAcquire); and they count as use of the pool.
func (t *releaseTracer) TraceAcquireStart(ctx context.Context, p *pgxpool.Pool, d pgxpool.TraceAcquireStartData) context.Context {
	if !t.e.isOwnAcquire(ctx) {
		t.e.nativeAcquire(+1)
	}
	if i, ok := t.inner.(pgxpool.AcquireTracer); ok {
		return i.TraceAcquireStart(ctx, p, d)
	}
	return ctx
}

func (t *releaseTracer) TraceAcquireEnd(ctx context.Context, p *pgxpool.Pool, d pgxpool.TraceAcquireEndData) {
	if !t.e.isOwnAcquire(ctx) {
		t.e.nativeAcquire(-1)
	}
	if i, ok := t.inner.(pgxpool.AcquireTracer); ok {
		i.TraceAcquireEnd(ctx, p, d)
	}
}
