package bed

import (
	"testing"
	"time"
)

func TestParseHello(t *testing.T) {
	cases := map[string]struct {
		body string
		pod  string
		ok   bool
	}{
		"seed echo":        {body: "Hello! I am Pod: web-1 10.244.0.2\n", pod: "web-1", ok: true},
		"no newline":       {body: "Hello! I am Pod: web-1 10.244.0.2"},
		"other body":       {body: "<html>502 Bad Gateway</html>\n"},
		"empty":            {},
		"missing pod ip":   {body: "Hello! I am Pod: web-1\n"},
		"two bodies glued": {body: "Hello! I am Pod: a 1\nHello! I am Pod: b 2\n"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			pod, ok := ParseHello(tc.body)
			if pod != tc.pod || ok != tc.ok {
				t.Fatalf("ParseHello(%q) = %q, %v; want %q, %v", tc.body, pod, ok, tc.pod, tc.ok)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	var samples []Sample
	for i := range 100 {
		samples = append(samples, Sample{Start: t0.Add(time.Duration(i) * 10 * ms), Dur: 10 * ms, OK: true, Pod: []string{"a", "b"}[i%2]})
	}
	samples[50] = Sample{Start: t0.Add(500 * ms), Dur: 600 * ms, Detail: "exit=28"}
	s := Summarize(samples)
	if s.Requests != 100 || s.Failures != 1 || s.Slow != 1 || s.PerPod["a"] != 49 || s.PerPod["b"] != 50 {
		t.Fatalf("summary %v", s)
	}
	if s.P99 != 10*ms || s.Max != 600*ms {
		t.Fatalf("p99 %v max %v", s.P99, s.Max)
	}
	w := s.Between(t0, t0.Add(100*ms))
	if w.Requests != 10 || w.Failures != 0 {
		t.Fatalf("window %v", w)
	}
	if got := Summarize(nil).String(); got != "requests=0 failed=0 slow=0 p99=0s max=0s rate=0/s pods=0 {}" {
		t.Fatalf("empty summary %q", got)
	}
}

func TestIPPoolNextFit(t *testing.T) {
	p := newIPPool(2, 4)
	var got []int
	for range 3 {
		o, err := p.take()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, o)
	}
	if _, err := p.take(); err == nil {
		t.Fatal("pool of 3 gave a 4th address")
	}
	p.release(3)
	p.release(2)
	if o, _ := p.take(); o != 2 { // next-fit wraps to the lowest free after 4
		t.Fatalf("after releasing 2 and 3 got %d, want 2", o)
	}
	if o, _ := p.take(); o != 3 {
		t.Fatalf("got %d, want 3", o)
	}
	if got[0] != 2 || got[1] != 3 || got[2] != 4 {
		t.Fatalf("first takes %v", got)
	}
}
