package main

import (
	"math"
	"testing"
)

func TestInstructionsReadsCachegrindsTotal(t *testing.T) {
	report := "==29558== Cachegrind, a cache and branch-prediction profiler\n==29558== \n==29558== I   refs:      123,129,785\n"
	n, err := instructions(report)
	if err != nil || n != 123129785 {
		t.Fatalf("instructions = %d, %v; want 123129785", n, err)
	}
	if _, err := instructions("==1== Command: x\nvalgrind: failed to start tool\n"); err == nil {
		t.Fatal("a report without a total gave no error")
	}
}

func TestCountedRatioRangePairsEveryRepetition(t *testing.T) {
	x := countedRow{name: "tenantpg", instr: []float64{90, 95, 100}, n: 10, rep: childReport{Writes: 10, Reads: 10, BytesOut: 970, BytesIn: 400}}
	base := countedRow{name: "stdlib.OpenDB", instr: []float64{100, 110, 120}, n: 20, rep: childReport{Writes: 20, Reads: 20, BytesOut: 1960, BytesIn: 800}}
	c := newCountedRatio("direct", x, base)
	for _, v := range []struct {
		name      string
		got, want float64
	}{
		{"ratio of medians", c.ratio, 95.0 / 110},
		{"lowest: fewest over most", c.lo, 90.0 / 120},
		{"highest: most over fewest", c.hi, 100.0 / 100},
	} {
		if math.Abs(v.got-v.want) > 1e-12 {
			t.Errorf("%s = %v, want %v", v.name, v.got, v.want)
		}
	}
}

func TestWireDiffNamesWhatDiffers(t *testing.T) {
	base := countedRow{n: 10, rep: childReport{Writes: 10, Reads: 10, BytesOut: 980, BytesIn: 400}}
	same := countedRow{n: 20, rep: childReport{Writes: 20, Reads: 20, BytesOut: 1940, BytesIn: 800}}
	if got, want := wireDiff(same, base), "the same net.Conn writes and reads per query, bytes sent -1.0 and received +0.0"; got != want {
		t.Errorf("wireDiff = %q, want %q", got, want)
	}
	more := countedRow{n: 10, rep: childReport{Writes: 20, Reads: 15, BytesOut: 980, BytesIn: 400}}
	if got, want := wireDiff(more, base), "net.Conn writes +1.00 and reads +0.50 per query, bytes sent +0.0 and received +0.0"; got != want {
		t.Errorf("wireDiff = %q, want %q", got, want)
	}
}

func TestWireDiffPrintsNoNegativeZero(t *testing.T) {
	base := countedRow{n: 1000, rep: childReport{Writes: 1000, Reads: 1000, BytesOut: 98000, BytesIn: 40001}}
	x := countedRow{n: 1000, rep: childReport{Writes: 1000, Reads: 1000, BytesOut: 98000, BytesIn: 40000}}
	if got, want := wireDiff(x, base), "the same net.Conn writes and reads per query, bytes sent +0.0 and received +0.0"; got != want {
		t.Errorf("wireDiff = %q, want %q", got, want)
	}
}
