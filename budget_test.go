package tenantpg

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestBudgetTakeFailsFastWhenFull(t *testing.T) {
	b := newBudget(2)
	a := &poolEntry{}
	for i := 0; i < 2; i++ {
		if err := b.take(nil, a); err != nil {
			t.Fatal(err)
		}
	}
	err := b.take(nil, a)
	if !errors.Is(err, errBudgetFull) || !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("take on a full budget = %v", err)
	}
	if b.open.Load() != 2 || a.open.Load() != 2 || len(b.holders) != 1 {
		t.Fatalf("open %d, a %d, holders %d", b.open.Load(), a.open.Load(), len(b.holders))
	}
	b.release(a)
	b.release(a)
	if b.used != 0 || b.open.Load() != 0 || len(b.holders) != 0 {
		t.Fatalf("after release: used %d open %d holders %d", b.used, b.open.Load(), len(b.holders))
	}
}

// noPolls makes waiters wait for grants only, so that tests can order them
// without racing the poll timers on a loaded machine.
func noPolls(t *testing.T) {
	p, ip := pollInterval, idlePollInterval
	pollInterval, idlePollInterval = time.Hour, time.Hour
	t.Cleanup(func() { pollInterval, idlePollInterval = p, ip })
}

func TestBudgetGrantsFewestConnectionsFirst(t *testing.T) {
	noPolls(t)
	b := newBudget(2)
	full, poor, rich := &poolEntry{}, &poolEntry{}, &poolEntry{}
	must(t, b.take(nil, full))
	must(t, b.take(nil, rich))
	ctx := context.Background()
	// rich queues first, but poor has no connection and wins the slot.
	got := make(chan *poolEntry, 2)
	var wg sync.WaitGroup
	for _, e := range []*poolEntry{rich, poor} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &callState{}
			var waited time.Duration
			for {
				// rich polls (it has a connection); poor waits for a grant.
				granted, err := b.wait(ctx, st, e, "x", &waited)
				if err != nil {
					t.Error(err)
					return
				}
				if granted {
					must(t, b.take(st, e))
					got <- e
					return
				}
			}
		}()
		waitFor(t, func() bool { return b.waiting.Load() >= 1 })
	}
	waitFor(t, func() bool { return b.waiting.Load() == 2 })
	b.release(full)
	if first := <-got; first != poor {
		t.Fatal("slot went to the waiter that already has a connection")
	}
	b.release(poor)
	if second := <-got; second != rich {
		t.Fatal("second slot lost")
	}
	wg.Wait()
	if rich.open.Load() != 2 || poor.open.Load() != 0 || b.used != 2 {
		t.Fatalf("rich %d poor %d used %d", rich.open.Load(), poor.open.Load(), b.used)
	}
}

func TestBudgetWaitEndsWithContext(t *testing.T) {
	b := newBudget(1)
	e, other := &poolEntry{}, &poolEntry{}
	must(t, b.take(nil, e))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	var waited time.Duration
	var err error
	for err == nil {
		_, err = b.wait(ctx, &callState{}, other, "y", &waited)
	}
	var be *BudgetError
	if !errors.As(err, &be) || !errors.Is(err, ErrBudgetExhausted) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want *BudgetError wrapping DeadlineExceeded", err)
	}
	if be.Tenant != "y" || be.Limit != 1 || be.Waited < 10*time.Millisecond || waited < 10*time.Millisecond {
		t.Fatalf("BudgetError = %+v, waited %s", be, waited)
	}
	if b.waiting.Load() != 0 || len(b.queue) != 0 || b.timeouts.Load() != 1 {
		t.Fatal("timed out waiter left in the queue or not counted")
	}
	b.release(e)
	if b.used != 0 {
		t.Fatalf("used = %d after release, want 0", b.used)
	}
}

func TestBudgetWaiterPolls(t *testing.T) {
	b := newBudget(1)
	e, other := &poolEntry{}, &poolEntry{}
	must(t, b.take(nil, e))
	for _, tc := range []struct {
		e    *poolEntry
		poll time.Duration
	}{{e, pollInterval}, {other, idlePollInterval}} {
		var waited time.Duration
		granted, err := b.wait(context.Background(), &callState{}, tc.e, "x", &waited)
		if granted || err != nil || waited < tc.poll/2 || waited > 50*tc.poll {
			t.Fatalf("wait = %v, %v after %s; want a poll timeout after %s", granted, err, waited, tc.poll)
		}
		if b.waiting.Load() != 0 {
			t.Fatal("poller left in the queue")
		}
	}
}

func TestBudgetEvictsBeforeFailing(t *testing.T) {
	b := newBudget(1)
	idle, hot := &poolEntry{}, &poolEntry{}
	must(t, b.take(nil, idle))
	evicted := 0
	b.evict = func(self *poolEntry, _ bool) bool {
		if self != hot {
			t.Errorf("evict called for %p", self)
		}
		if idle.open.Load() == 0 {
			return false
		}
		evicted++
		b.release(idle) // what closing the idle connection's socket does
		return true
	}
	must(t, b.take(nil, hot))
	if evicted != 1 || hot.open.Load() != 1 || b.used != 1 {
		t.Fatalf("evicted %d, hot open %d, used %d", evicted, hot.open.Load(), b.used)
	}
}

func TestBudgetReservationIsUsedOrGivenBack(t *testing.T) {
	noPolls(t)
	b := newBudget(1)
	e := &poolEntry{}
	must(t, b.take(nil, e))
	st := &callState{}
	done := make(chan bool)
	go func() {
		var waited time.Duration
		other := &poolEntry{}
		for { // polls return without a grant; wait again until granted
			granted, err := b.wait(context.Background(), st, other, "x", &waited)
			if granted || err != nil {
				done <- granted && err == nil
				return
			}
		}
	}()
	waitFor(t, func() bool { return b.waiting.Load() == 1 })
	b.release(e)
	if !<-done || !st.reserved.Load() {
		t.Fatal("grant not reserved")
	}
	// The pool handed out an idle connection instead: give the slot back.
	b.finish(st)
	if b.used != 0 || st.reserved.Load() {
		t.Fatalf("used %d after giving back", b.used)
	}
}

func TestBudgetShouldYield(t *testing.T) {
	b := newBudget(4)
	hot, none, one := &poolEntry{}, &poolEntry{}, &poolEntry{}
	for i := 0; i < 3; i++ {
		must(t, b.take(nil, hot))
	}
	must(t, b.take(nil, one))
	if b.shouldYield(hot) {
		t.Fatal("yield with nobody waiting")
	}
	b.mu.Lock()
	b.queue = []*budgetWaiter{{e: hot}, {e: one}}
	b.waiting.Store(2)
	b.mu.Unlock()
	if !b.shouldYield(hot) {
		t.Fatal("hot (3) does not yield to a waiter with 1")
	}
	if b.shouldYield(one) {
		t.Fatal("one yields to hot, which has more")
	}
	b.mu.Lock()
	b.queue = []*budgetWaiter{{e: none}}
	b.mu.Unlock()
	if !b.shouldYield(one) {
		t.Fatal("a tenant with one connection does not yield to one with none")
	}
}

func TestBudgetConcurrentAccounting(t *testing.T) {
	// Many callers take, wait, time out and release: no slot may be lost or
	// duplicated.
	b := newBudget(3)
	entries := []*poolEntry{{}, {}, {}, {}, {}}
	var wg sync.WaitGroup
	for i := 0; i < 60; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := entries[i%len(entries)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%7)*time.Millisecond)
			defer cancel()
			st := &callState{}
			var waited time.Duration
			for {
				err := b.take(st, e)
				if err == nil {
					time.Sleep(time.Duration(i%3) * time.Millisecond)
					b.release(e)
					return
				}
				if _, err := b.wait(ctx, st, e, "t", &waited); err != nil {
					b.finish(st)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.used != 0 || b.open.Load() != 0 || len(b.queue) != 0 || b.waiting.Load() != 0 || len(b.holders) != 0 {
		t.Fatalf("leaked: used %d open %d queue %d waiting %d holders %d", b.used, b.open.Load(), len(b.queue), b.waiting.Load(), len(b.holders))
	}
	if p := b.peak.Load(); p > 3 {
		t.Fatalf("peak %d over the budget of 3", p)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
