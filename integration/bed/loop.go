package bed

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// SlowThreshold marks a request as slow in a Summary.
const SlowThreshold = 500 * time.Millisecond

// LoopOptions configure a curl loop. Each request is a new curl process, so a
// new connection.
type LoopOptions struct {
	URL      string
	Workers  int           // parallel loops (default 4)
	Duration time.Duration // stop after this long (0: until Stop)
	Requests int           // stop after this many requests in total (0: no limit)
	Interval time.Duration // pause between one worker's requests
	MaxTime  time.Duration // curl --max-time (default 5s)
	// OnSample, when set, is called for every request (from worker goroutines).
	OnSample func(Sample)
}

// Sample is one request of a loop.
type Sample struct {
	Start  time.Time
	Dur    time.Duration
	Pod    string // who answered (parsed from the body); "" on failure
	OK     bool
	Detail string // curl's exit code and stderr, or the unexpected body; stderr when OK
}

// Loop is a running curl loop.
type Loop struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex // mu guards samples and issued
	// samples are all finished requests.
	samples []Sample
	issued  int
}

// Curler runs the real curl once (a new connection) from somewhere: a
// client namespace (Client) or a pod of the kubelet node (PodClient).
type Curler interface {
	Curl(ctx context.Context, url string, maxTime time.Duration) Result
}

// StartLoop starts opts.Workers curl loops in the client namespace.
func (c *Client) StartLoop(ctx context.Context, opts LoopOptions) *Loop {
	return StartLoop(ctx, c, opts)
}

// StartLoop starts opts.Workers curl loops run by c.
func StartLoop(ctx context.Context, c Curler, opts LoopOptions) *Loop {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.MaxTime <= 0 {
		opts.MaxTime = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	if opts.Duration > 0 {
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
	}
	l := &Loop{cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.worker(ctx, c, opts)
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// curlLoopWorker body: request until the context ends or the budget is used.
func (l *Loop) worker(ctx context.Context, c Curler, opts LoopOptions) {
	for ctx.Err() == nil {
		l.mu.Lock()
		if opts.Requests > 0 && l.issued >= opts.Requests {
			l.mu.Unlock()
			return
		}
		l.issued++
		l.mu.Unlock()
		// The request itself is not bound to ctx: a request in flight when
		// the loop stops finishes and counts.
		r := c.Curl(context.Background(), opts.URL, opts.MaxTime)
		s := Sample{Start: r.Start, Dur: r.Dur}
		if pod, ok := ParseHello(r.Out); ok && r.OK() {
			s.OK, s.Pod = true, pod
			s.Detail = strings.TrimSpace(r.Err) // a client may report timings there
		} else {
			s.Detail = fmt.Sprintf("exit=%d %s%s", r.Code, strings.TrimSpace(r.Err), strings.TrimSpace(r.Out))
		}
		l.mu.Lock()
		l.samples = append(l.samples, s)
		l.mu.Unlock()
		if opts.OnSample != nil {
			opts.OnSample(s)
		}
		if opts.Interval > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(opts.Interval):
			}
		}
	}
}

// Stop ends the loop (requests in flight finish) and returns its summary.
func (l *Loop) Stop() Summary {
	l.cancel()
	return l.Wait()
}

// Wait waits for the loop to end by itself (Duration or Requests).
func (l *Loop) Wait() Summary {
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return Summarize(l.samples)
}

// Snapshot returns the summary so far without stopping.
func (l *Loop) Snapshot() Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Summarize(slices.Clone(l.samples))
}

// ParseHello extracts the pod name from "Hello! I am Pod: <name> <ip>\n".
func ParseHello(body string) (string, bool) {
	rest, ok := strings.CutPrefix(body, "Hello! I am Pod: ")
	if !ok || !strings.HasSuffix(rest, "\n") {
		return "", false
	}
	f := strings.Fields(rest)
	if len(f) != 2 {
		return "", false
	}
	return f[0], true
}

// Summary condenses a loop's samples.
type Summary struct {
	Requests int
	Failures int
	Slow     int // requests slower than SlowThreshold
	P99, Max time.Duration
	Elapsed  time.Duration // first start to last end
	PerPod   map[string]int
	Failed   []Sample // the first failures, for messages
	Samples  []Sample // all, in start order
}

// Summarize computes a Summary of samples.
func Summarize(samples []Sample) Summary {
	s := Summary{PerPod: map[string]int{}, Samples: samples}
	sort.Slice(samples, func(i, j int) bool { return samples[i].Start.Before(samples[j].Start) })
	durs := make([]time.Duration, 0, len(samples))
	var first, last time.Time
	for _, x := range samples {
		s.Requests++
		durs = append(durs, x.Dur)
		if x.Dur > SlowThreshold {
			s.Slow++
		}
		if x.OK {
			s.PerPod[x.Pod]++
		} else {
			s.Failures++
			if len(s.Failed) < 10 {
				s.Failed = append(s.Failed, x)
			}
		}
		if first.IsZero() || x.Start.Before(first) {
			first = x.Start
		}
		if end := x.Start.Add(x.Dur); end.After(last) {
			last = end
		}
	}
	if len(durs) > 0 {
		slices.Sort(durs)
		s.P99 = durs[(len(durs)*99+99)/100-1]
		s.Max = durs[len(durs)-1]
		s.Elapsed = last.Sub(first)
	}
	return s
}

// Between summarizes the samples that started in [from, to).
func (s Summary) Between(from, to time.Time) Summary {
	var in []Sample
	for _, x := range s.Samples {
		if !x.Start.Before(from) && x.Start.Before(to) {
			in = append(in, x)
		}
	}
	return Summarize(in)
}

// Rate is requests per second over Elapsed.
func (s Summary) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Requests) / s.Elapsed.Seconds()
}

// String is the one-line summary tests print and assert on.
func (s Summary) String() string {
	pods := make([]string, 0, len(s.PerPod))
	for p, n := range s.PerPod {
		pods = append(pods, fmt.Sprintf("%s:%d", p, n))
	}
	sort.Strings(pods)
	return fmt.Sprintf("requests=%d failed=%d slow=%d p99=%v max=%v rate=%.0f/s pods=%d {%s}",
		s.Requests, s.Failures, s.Slow, s.P99.Round(time.Millisecond), s.Max.Round(time.Millisecond),
		s.Rate(), len(s.PerPod), strings.Join(pods, " "))
}

// FailureDetail lists the first failures, one per line.
func (s Summary) FailureDetail() string {
	var sb strings.Builder
	for _, f := range s.Failed {
		fmt.Fprintf(&sb, "  %s +%v: %s\n", f.Start.Format("15:04:05.000"), f.Dur.Round(time.Millisecond), f.Detail)
	}
	return sb.String()
}
