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
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/uproxy/uproxy/svc"
)

// TestAcceptSurvivesFDExhaustion runs a proxy in a child process with a tiny
// fd limit and floods it with held connections: connections beyond the limit
// are reset at once (shed, not left hanging), the held ones keep working,
// and service resumes by itself when they close.
func TestAcceptSurvivesFDExhaustion(t *testing.T) {
	if os.Getenv("UPROXY_FD_CHILD") != "" {
		fdChild(t)
		return
	}
	be := newBackend(t, "b", "echo")
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptSurvivesFDExhaustion$", "-test.count=1")
	cmd.Env = append(os.Environ(), "UPROXY_FD_CHILD=1", "UPROXY_FD_ENDPOINT="+be.addr())
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
	lines := bufio.NewScanner(stdout)
	addr := ""
	for lines.Scan() {
		if a, ok := strings.CutPrefix(lines.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("child did not start")
	}

	ping := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	shed := 0
	for range 60 {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			err = ping(c)
		}
		if err == nil {
			held = append(held, c)
			continue
		}
		if c != nil {
			_ = c.Close()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection beyond the fd limit hung instead of being reset: %v", err)
		}
		shed++
	}
	if len(held) == 0 || shed == 0 {
		t.Fatalf("held %d, shed %d: the limit was not reached", len(held), shed)
	}
	for _, c := range held { // the held connections still work
		if err := ping(c); err != nil {
			t.Fatalf("held connection broken: %v", err)
		}
	}
	nheld := len(held)
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	eventually(t, "service resumes", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		return ping(c) == nil
	})
	_ = stdin.Close()
	var stats string
	for lines.Scan() {
		if s, ok := strings.CutPrefix(lines.Text(), "STATS "); ok {
			stats = s
		}
	}
	var acceptErrs, shedCount, dialFailed uint64
	if _, err := fmt.Sscan(stats, &acceptErrs, &shedCount, &dialFailed); err != nil {
		t.Fatalf("child stats %q: %v", stats, err)
	}
	t.Logf("held %d connections before the limit; client saw %d resets; child: %d accept errors, %d shed, %d reset after failed dials",
		nheld, shed, acceptErrs, shedCount, dialFailed)
	if acceptErrs == 0 || shedCount+dialFailed == 0 {
		t.Fatalf("child stats %q: want accept errors and shed connections", stats)
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
	p, err := New(Config{BindAddr: netip.MustParseAddr("127.0.0.1")}, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	n := pn("fd", "")
	mustSync(t, p, tcpPort(n, 80))
	p.UpdateEndpoints(map[svc.PortName][]svc.Endpoint{n: ready(os.Getenv("UPROXY_FD_ENDPOINT"))})
	fmt.Printf("ADDR %s\n", addrOf(p, n))
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
	fmt.Printf("STATS %d %d %d\n", p.acceptErrors.Load(), p.shed.Load(), p.Snapshot()[0].DialFailureResets)
}
