package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// fdChildProc is a proxy running in a child process of the test binary with a
// tiny fd limit, driven over stdin/stdout: it prints "ADDR a", obeys "fill"
// (open files until EMFILE), "free" (close them) and, at EOF, prints
// "STATS acceptErrors shed dialFailureResets" and exits.
type fdChildProc struct {
	addr  string
	stdin io.WriteCloser
	lines *bufio.Scanner
}

func startFDChild(t *testing.T, test, headroom string) *fdChildProc {
	t.Helper()
	be := newBackend(t, "b", "echo")
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), "UPROXY_FD_CHILD=1", "UPROXY_FD_ENDPOINT="+be.addr(), "UPROXY_FD_HEADROOM="+headroom)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := &fdChildProc{stdin: stdin, lines: bufio.NewScanner(stdout)}
	c.addr = c.expect(t, "ADDR ")
	return c
}

// expect reads lines until one starts with prefix and returns the rest.
func (c *fdChildProc) expect(t *testing.T, prefix string) string {
	t.Helper()
	for c.lines.Scan() {
		if s, ok := strings.CutPrefix(c.lines.Text(), prefix); ok {
			return s
		}
	}
	t.Fatalf("child ended before printing %q", prefix)
	return ""
}

// stats ends the child and returns its counters.
func (c *fdChildProc) stats(t *testing.T) (acceptErrs, shed, dialFailed uint64) {
	t.Helper()
	_ = c.stdin.Close()
	s := c.expect(t, "STATS ")
	if _, err := fmt.Sscan(s, &acceptErrs, &shed, &dialFailed); err != nil {
		t.Fatalf("child stats %q: %v", s, err)
	}
	return acceptErrs, shed, dialFailed
}

func fdPing(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// dialPing connects and echoes one byte; hung reports a connection left
// waiting (neither served nor reset) for 3s.
func dialPing(addr string) (c net.Conn, hung bool, err error) {
	c, err = net.Dial("tcp", addr)
	if err == nil {
		err = fdPing(c)
	}
	if err == nil {
		return c, false, nil
	}
	if c != nil {
		_ = c.Close()
	}
	return nil, errors.Is(err, os.ErrDeadlineExceeded), err
}

// waitServing waits until a connection through the child is served again.
func (c *fdChildProc) waitServing(t *testing.T) {
	t.Helper()
	eventually(t, "service resumes", func() bool {
		conn, _, err := dialPing(c.addr)
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	})
}

// TestConnectionsShedAtFDBudget floods a proxy whose fd limit leaves room
// for a few connections: those beyond the budget are reset at once (shed,
// never left hanging in the backlog), the held ones keep working, and
// service resumes by itself when they close.
func TestConnectionsShedAtFDBudget(t *testing.T) {
	if os.Getenv("UPROXY_FD_CHILD") != "" {
		fdChild(t)
		return
	}
	child := startFDChild(t, "TestConnectionsShedAtFDBudget", "4")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	shed := 0
	for range 60 {
		c, hung, err := dialPing(child.addr)
		if hung {
			t.Fatalf("a connection beyond the fd budget hung instead of being reset: %v", err)
		}
		if err != nil {
			shed++
			continue
		}
		held = append(held, c)
	}
	if len(held) == 0 || shed == 0 {
		t.Fatalf("held %d, shed %d: the budget was not reached", len(held), shed)
	}
	for _, c := range held {
		if err := fdPing(c); err != nil {
			t.Fatalf("held connection broken: %v", err)
		}
	}
	nheld := len(held)
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	child.waitServing(t)
	acceptErrs, shedCount, dialFailed := child.stats(t)
	t.Logf("held %d connections; client saw %d resets; child: %d accept errors, %d shed, %d reset after failed dials",
		nheld, shed, acceptErrs, shedCount, dialFailed)
	if shedCount == 0 {
		t.Fatalf("child counted no shed connection")
	}
}

// TestAcceptSurvivesEMFILE exhausts the fds of a proxy without admission
// control (files opened until EMFILE): accept fails, backs off without
// spinning, and the spare fd lets it reset pending connections at once;
// when the files close, service resumes by itself.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	if os.Getenv("UPROXY_FD_CHILD") != "" {
		fdChild(t)
		return
	}
	child := startFDChild(t, "TestAcceptSurvivesEMFILE", "-1")
	if c, _, err := dialPing(child.addr); err != nil {
		t.Fatalf("before the fds run out: %v", err)
	} else {
		_ = c.Close()
	}
	_, _ = io.WriteString(child.stdin, "fill\n")
	filled := child.expect(t, "FILLED ")
	resets := 0
	for range 10 {
		c, hung, err := dialPing(child.addr)
		if hung {
			t.Fatalf("a connection at EMFILE hung instead of being reset: %v", err)
		}
		if err == nil {
			_ = c.Close()
			t.Fatalf("a connection was served with every fd taken")
		}
		resets++
	}
	_, _ = io.WriteString(child.stdin, "free\n")
	child.expect(t, "FREED")
	child.waitServing(t)
	acceptErrs, shed, _ := child.stats(t)
	t.Logf("filled %s fds; client saw %d resets; child: %d accept errors, %d shed", filled, resets, acceptErrs, shed)
	if acceptErrs == 0 || shed == 0 {
		t.Fatalf("child counted %d accept errors and %d shed: want both", acceptErrs, shed)
	}
	// Backoff: 10 connections within a few seconds cost at most a few dozen
	// accept errors (5ms doubling to 1s), not a busy loop.
	if acceptErrs > 200 {
		t.Fatalf("%d accept errors: the accept loop spins at EMFILE", acceptErrs)
	}
}

// fdChild is the child side: a proxy under a fd limit of open fds + 24.
func fdChild(t *testing.T) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := uint64(len(ents) + 24)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: lim, Max: lim}); err != nil {
		t.Fatal(err)
	}
	headroom, _ := strconv.Atoi(os.Getenv("UPROXY_FD_HEADROOM"))
	p, err := New(Config{BindAddr: netip.MustParseAddr("127.0.0.1"), FDHeadroom: headroom}, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	n := pn("fd", "")
	mustSync(t, p, tcpPort(n, 80))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(os.Getenv("UPROXY_FD_ENDPOINT"))})
	fmt.Printf("ADDR %s\n", addrOf(p, n))
	var filler []*os.File
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "fill":
			for p.handlers.Load() > 0 { // earlier relays must have freed their fds
				time.Sleep(time.Millisecond)
			}
			for {
				f, err := os.Open(os.DevNull)
				if err != nil {
					break
				}
				filler = append(filler, f)
			}
			fmt.Printf("FILLED %d\n", len(filler))
		case "free":
			for _, f := range filler {
				_ = f.Close()
			}
			filler = nil
			fmt.Println("FREED")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
	fmt.Printf("STATS %d %d %d\n", p.acceptErrors.Load(), p.shed.Load(), p.Snapshot()[0].DialFailureResets)
}
