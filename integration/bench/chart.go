package bench

import (
	"fmt"
	"html"
	"io"
	"strings"
)

// chartGroup is one measure: a value per target, shown relative to direct.
type chartGroup struct {
	label string
	vals  map[string]float64
}

var chartColors = map[string]string{Direct: "#9e9e9e", Uproxy: "#1f77b4", HAProxyTCP: "#ff7f0e", HAProxyHTTP: "#d62728"}

// WriteSVG draws grouped bars: each throughput measure's median per target
// divided by direct's, with the absolute value above each bar.
func (r *Results) WriteSVG(w io.Writer) error {
	groups := []chartGroup{
		{"keep-alive req/s", map[string]float64{}},
		{"new connections/s", map[string]float64{}},
		{"bulk MB/s", map[string]float64{}},
		{"DNS queries/s", map[string]float64{}},
	}
	for _, t := range Targets {
		groups[0].vals[t] = medRPS(r.KeepAlive[t])
		groups[1].vals[t] = medRPS(r.Close[t])
		groups[2].vals[t] = Median(r.Bulk[t]) / 1e6
		if len(r.DNS[t]) > 0 {
			groups[3].vals[t] = medQPS(r.DNS[t])
		}
	}
	const (
		width, height      = 860, 380
		left, top, bottom  = 60, 50, 70
		barW, barGap, grpG = 38, 4, 40
	)
	plotH := float64(height - top - bottom)
	maxR := 1.2
	for _, g := range groups {
		for _, t := range Targets {
			if d := g.vals[Direct]; d > 0 && g.vals[t]/d > maxR {
				maxR = g.vals[t] / d
			}
		}
	}
	y := func(ratio float64) float64 { return float64(top) + plotH*(1-ratio/maxR) }
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="22" font-size="14" font-weight="bold">uproxy vs direct and HAProxy (median, relative to direct = 1.0) — %s</text>`+"\n", left, r.Date.Format("2006-01-02"))
	for _, tick := range []float64{0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2} {
		if tick > maxR {
			break
		}
		yy := y(tick)
		stroke := "#e0e0e0"
		if tick == 1 {
			stroke = "#555"
		}
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s"/>`+"\n", left, width-20, yy, yy, stroke)
		p(`<text x="%d" y="%.1f" text-anchor="end">%.2f×</text>`+"\n", left-6, yy+4, tick)
	}
	x := left + 20
	for _, g := range groups {
		gx := x
		d := g.vals[Direct]
		for _, t := range Targets {
			v := g.vals[t]
			if v > 0 && d > 0 {
				rr := v / d
				p(`<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s %s: %.0f (%.2f× direct)</title></rect>`+"\n",
					x, y(rr), barW, y(0)-y(rr), chartColors[t], html.EscapeString(g.label), t, v, rr)
				p(`<text x="%d" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n", x+barW/2, y(rr)-3, short(v))
			} else {
				p(`<text x="%d" y="%.1f" text-anchor="middle" font-size="9">n/a</text>`+"\n", x+barW/2, y(0)-3)
			}
			x += barW + barGap
		}
		p(`<text x="%d" y="%d" text-anchor="middle" font-size="12">%s</text>`+"\n", (gx+x-barGap)/2, height-bottom+18, html.EscapeString(g.label))
		x += grpG
	}
	lx := left
	for _, t := range Targets {
		p(`<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", lx, height-28, chartColors[t], lx+16, height-18, t)
		lx += 130
	}
	p("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}
