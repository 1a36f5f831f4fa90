package main

import (
	"fmt"
	"math"
	"strings"
)

// chart is a log-x line chart of throughput against tenant count, rendered
// as a standalone SVG without dependencies.
type chart struct {
	title  string
	xs     []int
	series []chartSeries
}

type chartSeries struct {
	name string
	ys   []float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"}

func (c *chart) svg() string {
	const w, h, left, right, top, bottom = 760, 440, 80, 200, 50, 60
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	ymax := 1.0
	for _, s := range c.series {
		for _, y := range s.ys {
			ymax = math.Max(ymax, y)
		}
	}
	ymax = niceCeil(ymax)
	xmin, xmax := math.Log10(float64(c.xs[0])), math.Log10(float64(c.xs[len(c.xs)-1]))
	if xmax == xmin {
		xmax = xmin + 1
	}
	px := func(x int) float64 { return float64(left) + (math.Log10(float64(x))-xmin)/(xmax-xmin)*pw }
	py := func(y float64) float64 { return float64(top) + ph - y/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="15">%s</text>`+"\n", left, c.title)
	for i := 0; i <= 5; i++ {
		y := ymax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, py(y), float64(left)+pw, py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, py(y)+4, y)
	}
	for _, x := range c.xs {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", px(x), top, px(x), float64(top)+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>`+"\n", px(x), float64(top)+ph+18, x)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">tenants (log scale)</text>`+"\n", float64(left)+pw/2, h-15)
	fmt.Fprintf(&b, `<text transform="translate(18,%.1f) rotate(-90)" text-anchor="middle">queries per second</text>`+"\n", float64(top)+ph/2)
	for i, s := range c.series {
		col := palette[i%len(palette)]
		var pts []string
		for j, y := range s.ys {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(c.xs[j]), py(y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for j, y := range s.ys {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", px(c.xs[j]), py(y), col)
		}
		ly := top + 20 + i*22
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", w-right+15, ly, w-right+40, ly, col)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", w-right+46, ly+4, s.name)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
