package reliability

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// connTarget is a place the connection load connects to.
type connTarget struct {
	name string
	addr string // ip:port
}

// connSample is one new connection of a connection load.
type connSample struct {
	target    int // index into the targets
	start     time.Time
	local     string        // the client's ip:port ("" when the connect failed)
	connect   time.Duration // until connect() returned
	firstByte time.Duration // until the first response byte (0: none)
	total     time.Duration // until the response was read or the attempt failed
	err       error
}

func (s connSample) String() string {
	return fmt.Sprintf("start %s from %s: connect %v, first byte %v, total %v, err %v",
		s.start.Format("15:04:05.000000"), s.local, round(s.connect), round(s.firstByte), round(s.total), s.err)
}

// connLoad makes n new connections, one HTTP request each, from workers
// loops in the client namespace. Connection i goes to targets[1] when
// i%every == every-1 and to targets[0] otherwise, so both see the same
// machine at the same time.
func (w *world) connLoad(targets []connTarget, n, workers, every int, maxTime time.Duration) []connSample {
	w.t.Helper()
	out := make([]connSample, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || w.ctx.Err() != nil {
					return
				}
				ti := 0
				if i%every == every-1 {
					ti = 1
				}
				out[i] = w.oneConn(ti, targets[ti].addr, maxTime)
			}
		}()
	}
	wg.Wait()
	if err := w.ctx.Err(); err != nil {
		w.t.Fatalf("connection load cut short: %v", err)
	}
	return out
}

// oneConn makes one connection and request as curl does: HTTP/1.1 without
// "Connection: close", the client closes after reading the response, all
// within maxTime.
func (w *world) oneConn(ti int, addr string, maxTime time.Duration) connSample {
	s := connSample{target: ti, start: time.Now()}
	fail := func(err error) connSample {
		s.err, s.total = err, time.Since(s.start)
		return s
	}
	ctx, cancel := context.WithTimeout(w.ctx, maxTime)
	defer cancel()
	c, err := w.client.NS.DialContext(ctx, "tcp", addr)
	s.connect = time.Since(s.start)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	s.local = c.LocalAddr().String()
	_ = c.SetDeadline(s.start.Add(maxTime))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: echo\r\nUser-Agent: stall\r\nAccept: */*\r\n\r\n"); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(c)
	if _, err := br.Peek(1); err != nil {
		return fail(err)
	}
	s.firstByte = time.Since(s.start)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return fail(err)
}
