package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tenantpg/tenantpg/internal/benchops"
)

// contender is one approach in a comparison. op runs one unit of work for
// worker w; i counts the worker's operations.
type contender struct {
	name string
	app  string // application_name of its connections, for counting them on the server
	op   func(ctx context.Context, w, i int) error
	warm func(ctx context.Context) // optional: bring the contender to steady state before measuring
	// fresh, optional, closes the contender's server connections before
	// each round's warm-up, so that it dials new ones: see freshNote.
	fresh func(ctx context.Context)
	close func()
}

// runResult is one contender's run in one round.
type runResult struct {
	ops, errs   int64
	dur         time.Duration
	lat         []time.Duration // sampled per-op latencies
	peakServer  int
	firstErr    error
	opsPerSec   float64
	p50, p99    time.Duration
	serverKnown bool
	steal       float64 // share of the machine's CPU time the hypervisor took during the run; -1 if unknown
}

// errStop ends a worker without counting an operation.
var errStop = errors.New("stop")

// sampler counts the server connections whose application_name is app.
type sampler func(ctx context.Context, app string) (int, error)

// runOnce runs c with workers goroutines for dur.
func runOnce(ctx context.Context, c contender, workers int, dur time.Duration, count sampler) runResult {
	rctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	s0, err0 := benchops.ReadCPUStat()
	r := runWhile(ctx, rctx, c, workers, count)
	s1, err1 := benchops.ReadCPUStat()
	r.steal = -1
	if err0 == nil && err1 == nil {
		r.steal = benchops.StealShare(s0, s1)
	}
	return r
}

// runWhile runs c with workers goroutines until rctx ends; operations get
// ctx, so that the end of the run does not cancel them halfway.
func runWhile(ctx, rctx context.Context, c contender, workers int, count sampler) runResult {
	var ops, errs atomic.Int64
	var firstErr atomic.Value
	lats := make([][]time.Duration, workers)
	peak := 0
	peakDone := make(chan struct{})
	go func() {
		defer close(peakDone)
		if count == nil || c.app == "" {
			return
		}
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				if n, err := count(ctx, c.app); err == nil && n > peak {
					peak = n
				}
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; rctx.Err() == nil; i++ {
				t0 := time.Now()
				err := c.op(ctx, w, i)
				d := time.Since(t0)
				if err == errStop {
					return
				}
				if err != nil {
					if errs.Add(1) == 1 {
						firstErr.Store(err)
					}
					continue
				}
				ops.Add(1)
				if i%4 == 0 || len(lats[w]) < 256 {
					lats[w] = append(lats[w], d)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	<-peakDone
	r := runResult{ops: ops.Load(), errs: errs.Load(), dur: elapsed, peakServer: peak, serverKnown: count != nil && c.app != ""}
	if e, ok := firstErr.Load().(error); ok {
		r.firstErr = e
	}
	for _, l := range lats {
		r.lat = append(r.lat, l...)
	}
	r.opsPerSec = float64(r.ops) / elapsed.Seconds()
	r.p50, r.p99 = percentile(r.lat, 0.50), percentile(r.lat, 0.99)
	return r
}

// summary is a contender's results over all rounds.
type summary struct {
	name       string
	rounds     []runResult
	median     float64 // ops/s
	p50, p99   time.Duration
	errs       int64
	peakServer int
	firstErr   error
	rerun      int // rounds of its comparison run again for steal (maxSteal)
	overSteal  int // rounds kept with more steal than maxSteal, once reruns ran out
}

// maxSteal is the share of CPU time the hypervisor may take during a
// measured run (benchops.StealShare). A round in which any run lost more
// is run again, at most as many times as there are rounds in all (its
// errors and server connection peaks still count): on this
// shared VM steal comes in bursts of up to 40% of a second, which moved
// one round's ratio anywhere between 0.4 and 4 (docs/benchmarks.md, session
// 11), while the differences the targets are about are a few percent. The
// rule looks at the machine, never at the results.
const maxSteal = 0.05

// interleave runs every contender once per round and summarises medians.
// Each round runs the contenders in a new order (a fixed-seed shuffle), so
// that no contender always follows the same one, and each measured run
// starts from a collected heap and a short unmeasured warm-up: what one
// contender leaves behind (garbage, idle connections) is not charged to the
// next.
func interleave(ctx context.Context, cs []contender, rounds, workers int, dur time.Duration, count sampler) []summary {
	for _, c := range cs {
		if c.warm != nil {
			c.warm(ctx)
		}
	}
	rng := rand.New(rand.NewPCG(1, uint64(len(cs))))
	order := make([]int, len(cs))
	for i := range order {
		order[i] = i
	}
	res := make([][]runResult, len(cs))
	dropped := make([][]runResult, len(cs)) // rounds run again: their errors and peaks still count
	round := make([]runResult, len(cs))
	rerun, overSteal := 0, 0
	for len(res[0]) < rounds {
		rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		stolen := false
		for _, i := range order {
			if cs[i].fresh != nil {
				cs[i].fresh(ctx)
			}
			runtime.GC()
			runOnce(ctx, cs[i], workers, dur/10, nil) // warm-up, not measured
			round[i] = runOnce(ctx, cs[i], workers, dur, count)
			stolen = stolen || round[i].steal > maxSteal
		}
		if stolen && rerun < rounds {
			rerun++
			for i := range cs {
				dropped[i] = append(dropped[i], round[i])
			}
			continue
		}
		if stolen {
			overSteal++
		}
		for i := range cs {
			res[i] = append(res[i], round[i])
		}
	}
	if os.Getenv("TPBENCH_ROUNDS") != "" { // per-round figures, for studying noise
		for i, c := range cs {
			for r, x := range res[i] {
				fmt.Fprintf(os.Stderr, "round %d %-22s %8.0f\n", r, c.name, x.opsPerSec)
			}
		}
	}
	out := make([]summary, len(cs))
	for i, c := range cs {
		s := summary{name: c.name, rounds: res[i], rerun: rerun, overSteal: overSteal}
		var tput []float64
		var lat []time.Duration
		for _, r := range res[i] {
			tput = append(tput, r.opsPerSec)
			lat = append(lat, r.lat...)
		}
		for _, r := range slices.Concat(res[i], dropped[i]) {
			s.errs += r.errs
			s.peakServer = max(s.peakServer, r.peakServer)
			if s.firstErr == nil {
				s.firstErr = r.firstErr
			}
		}
		s.median = median(tput)
		s.p50, s.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
		out[i] = s
	}
	return out
}

// ratio is the median over rounds of s's throughput divided by base's in
// the same round: pairing runs of one round cancels drifts between rounds.
func ratio(s, base summary) float64 { return median(roundRatios(s, base)) }

// roundRatios is s's throughput divided by base's, round by round.
func roundRatios(s, base summary) []float64 {
	var rs []float64
	for i := range min(len(s.rounds), len(base.rounds)) {
		if b := base.rounds[i].opsPerSec; b > 0 {
			rs = append(rs, s.rounds[i].opsPerSec/b)
		}
	}
	return rs
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}
