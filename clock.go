package tenantpg

import (
	"sync/atomic"
	"time"
)

// coarseClock is the time the checkout path uses: monotonic nanoseconds
// since the Connector was created, advanced by the reaper on every tick
// rather than read from the system. Reading the system clock costs about
// 70 ns on a virtual machine; the three reads a checkout used to make (the
// pool's last use, the park time and the park age) were most of what a
// handle cost over database/sql's own idle reuse. Everything timed with it
// (parked connections, idle pools, eviction order) is a reaper decision
// anyway, so a resolution of one reaper tick loses nothing.
type coarseClock struct {
	start time.Time // has a monotonic reading: immune to wall clock steps
	now   atomic.Int64
}

// read returns the time of the last tick.
func (k *coarseClock) read() int64 { return k.now.Load() }

// tick reads the system clock, publishes it and returns it.
func (k *coarseClock) tick() int64 {
	n := int64(time.Since(k.start))
	k.now.Store(n)
	return n
}

// wall converts a reading to wall clock time, for Stats.
func (k *coarseClock) wall(n int64) time.Time { return k.start.Add(time.Duration(n)) }
