package tenantpg

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func newTestState(ctx context.Context) *callState { return &callState{caller: ctx} }

func TestBudgetCapsAndHandsOffInOrder(t *testing.T) {
	b := newBudget(2)
	a, c := &poolEntry{}, &poolEntry{}
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := b.acquire(ctx, newTestState(ctx), a, "a"); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.open.Load(); got != 2 {
		t.Fatalf("open = %d, want 2", got)
	}
	// Two waiters queue in order; each release wakes the first.
	order := make(chan int, 2)
	var wg sync.WaitGroup
	for i := 1; i <= 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.acquire(ctx, newTestState(ctx), c, "c"); err != nil {
				t.Error(err)
				return
			}
			order <- i
		}()
		waitFor(t, func() bool { return int(b.waiting.Load()) == i })
	}
	b.release(a)
	if got := <-order; got != 1 {
		t.Fatalf("first slot went to waiter %d, want 1", got)
	}
	b.release(a)
	if got := <-order; got != 2 {
		t.Fatalf("second slot went to waiter %d, want 2", got)
	}
	wg.Wait()
	if b.open.Load() != 2 || c.open.Load() != 2 || a.open.Load() != 0 {
		t.Fatalf("open = %d (a %d, c %d)", b.open.Load(), a.open.Load(), c.open.Load())
	}
	b.release(c)
	b.release(c)
	if b.used != 0 || b.open.Load() != 0 || len(b.holders) != 0 {
		t.Fatalf("after releasing all: used %d open %d holders %d", b.used, b.open.Load(), len(b.holders))
	}
}

func TestBudgetWaitEndsWithCallerContext(t *testing.T) {
	b := newBudget(1)
	e := &poolEntry{}
	bg := context.Background()
	if err := b.acquire(bg, newTestState(bg), e, "x"); err != nil {
		t.Fatal(err)
	}
	caller, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	// The dialer's own context ignores the caller's deadline, as pgxpool's
	// constructor context does; the wait must still end with the caller's.
	err := b.acquire(bg, newTestState(caller), e, "y")
	var be *BudgetError
	if !errors.As(err, &be) || !errors.Is(err, ErrBudgetExhausted) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want *BudgetError wrapping DeadlineExceeded", err)
	}
	if be.Tenant != "y" || be.Limit != 1 || be.Waited < 10*time.Millisecond {
		t.Fatalf("BudgetError = %+v", be)
	}
	if b.waiting.Load() != 0 || len(b.queue) != 0 {
		t.Fatal("timed out waiter left in the queue")
	}
	b.release(e)
	if b.used != 0 {
		t.Fatalf("used = %d after release, want 0", b.used)
	}
	if b.timeouts.Load() != 1 {
		t.Fatalf("timeouts = %d", b.timeouts.Load())
	}
}

func TestBudgetBackgroundConnectNeverWaits(t *testing.T) {
	b := newBudget(1)
	e := &poolEntry{}
	bg := context.Background()
	if err := b.acquire(bg, newTestState(bg), e, "x"); err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(bg, nil, e, "x"); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("background acquire on a full budget = %v", err)
	}
}

func TestBudgetEvictsBeforeWaiting(t *testing.T) {
	b := newBudget(1)
	idle, hot := &poolEntry{}, &poolEntry{}
	bg := context.Background()
	if err := b.acquire(bg, newTestState(bg), idle, "idle"); err != nil {
		t.Fatal(err)
	}
	evicted := 0
	b.evict = func(self *poolEntry) bool {
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
	if err := b.acquire(bg, newTestState(bg), hot, "hot"); err != nil {
		t.Fatal(err)
	}
	if evicted != 1 || hot.open.Load() != 1 || b.used != 1 || b.waits.Load() != 0 {
		t.Fatalf("evicted %d, hot open %d, used %d, waits %d", evicted, hot.open.Load(), b.used, b.waits.Load())
	}
}

func TestBudgetGrantRacingCancelIsPassedOn(t *testing.T) {
	// Many waiters time out while slots are released: no slot may be lost
	// or duplicated.
	b := newBudget(3)
	e := &poolEntry{}
	bg := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(bg, time.Duration(i%5)*time.Millisecond)
			defer cancel()
			if err := b.acquire(bg, newTestState(ctx), e, "t"); err == nil {
				time.Sleep(time.Millisecond)
				b.release(e)
			}
		}()
	}
	wg.Wait()
	if b.used != 0 || b.open.Load() != 0 || len(b.queue) != 0 || b.waiting.Load() != 0 {
		t.Fatalf("leaked: used %d open %d queue %d waiting %d", b.used, b.open.Load(), len(b.queue), b.waiting.Load())
	}
	if p := b.peak.Load(); p > 3 {
		t.Fatalf("peak %d over the budget of 3", p)
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
