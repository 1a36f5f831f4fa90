package main

import (
	"math"
	"testing"
)

func TestMedianCI(t *testing.T) {
	xs := []float64{9, 1, 8, 2, 7, 3, 6, 4, 5} // 1..9 shuffled
	lo, hi, cov := medianCI(xs)
	// n = 9: P(X <= 1) = 10/512, so [x(2), x(8)] covers with 1 - 20/512.
	if lo != 2 || hi != 8 || math.Abs(cov-(1-20.0/512)) > 1e-9 {
		t.Errorf("n=9: got [%v, %v] at %.4f, want [2, 8] at %.4f", lo, hi, cov, 1-20.0/512)
	}
	var many []float64
	for i := range 25 {
		many = append(many, float64(i+1))
	}
	// n = 25: P(X <= 7) = 0.0216, P(X <= 8) = 0.0539: [x(8), x(18)].
	if lo, hi, cov := medianCI(many); lo != 8 || hi != 18 || cov < 0.95 || cov > 0.96 {
		t.Errorf("n=25: got [%v, %v] at %.4f, want [8, 18] at 0.9567", lo, hi, cov)
	}
	// n = 5 cannot reach 95%: the whole range, 1 - 2/32.
	if lo, hi, cov := medianCI([]float64{3, 1, 2, 5, 4}); lo != 1 || hi != 5 || math.Abs(cov-0.9375) > 1e-9 {
		t.Errorf("n=5: got [%v, %v] at %.4f, want [1, 5] at 0.9375", lo, hi, cov)
	}
}
