package main

import (
	"math"
	"slices"
)

// medianCI is a distribution-free confidence interval for the median of
// xs: the k-th smallest and k-th largest value, with k the largest for
// which the interval covers the median with probability at least 95%
// (binomial with p = 1/2). It returns that coverage; with fewer than 6
// values no interval reaches 95%, and it returns the whole range and its
// coverage.
func medianCI(xs []float64) (lo, hi, coverage float64) {
	n := len(xs)
	if n == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	k := 1 // 1-based rank of the lower end
	for k+1 <= n/2 && 1-2*binomCDF(n, k) >= 0.95 {
		k++
	}
	return s[k-1], s[n-k], 1 - 2*binomCDF(n, k-1)
}

// binomCDF is P(X <= k) for X ~ Binomial(n, 1/2).
func binomCDF(n, k int) float64 {
	p := 0.0
	for i := 0; i <= k; i++ {
		p += math.Exp(lchoose(n, i) - float64(n)*math.Ln2)
	}
	return p
}

func lchoose(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}
