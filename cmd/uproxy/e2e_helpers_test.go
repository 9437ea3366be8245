package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the end-to-end tests: building the binary, running it and
// reading its log, local echo backends.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// uproxyBinary builds bin/uproxy once for the package's tests.
func uproxyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "uproxy-e2e-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "uproxy")
		cmd := exec.Command("go", "build", "-o", binPath, "-ldflags", "-X github.com/uproxy/uproxy/cmd/uproxy/version.Version=e2e-test", ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// echoServer accepts on 127.0.0.1:0, greets each connection with its name
// and a newline, then echoes lines back until EOF.
func echoServer(t *testing.T, name string) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := fmt.Fprintf(c, "%s\n", name); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr)
}

// udpEcho answers every datagram with "udp-echo:" and the payload.
func udpEcho(t *testing.T) *net.UDPAddr {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("udp-echo:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr)
}

// freePort returns a port free on ip for network now (the kernel may hand
// it out again later; the tests use it at once).
func freePort(t *testing.T, network, ip string) int {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	default:
		pc, err := net.ListenPacket("udp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
}

// process is a running uproxy with its log.
type process struct {
	cmd     *exec.Cmd
	mu      sync.Mutex // guards log
	log     []string
	addrs   map[string]chan string // "healthz"/"metrics" -> bound address
	logDone chan struct{}          // closed when stderr hits EOF
	exited  chan struct{}          // closed when Wait returned
	err     error                  // Wait's result, valid after exited
}

var servingRE = regexp.MustCompile(`"server":"(\w+)","addr":"([^"]+)"`)

// startUproxy runs the binary with args and collects its JSON log.
func startUproxy(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{
		cmd:     exec.Command(uproxyBinary(t), args...),
		addrs:   map[string]chan string{"healthz": make(chan string, 1), "metrics": make(chan string, 1)},
		logDone: make(chan struct{}),
		exited:  make(chan struct{}),
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.readLog(stderr)
	go func() {
		<-p.logDone
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("uproxy log:\n%s", p.logText())
		}
	})
	return p
}

// readLog reads stderr until EOF, noting the HTTP servers' addresses.
func (p *process) readLog(r io.Reader) {
	defer close(p.logDone)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.log = append(p.log, line)
		p.mu.Unlock()
		if m := servingRE.FindStringSubmatch(line); m != nil {
			if ch, ok := p.addrs[m[1]]; ok {
				select {
				case ch <- m[2]:
				default:
				}
			}
		}
	}
}

func (p *process) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.log, "\n")
}

// waitLog waits until one log line contains every string in all.
func (p *process) waitLog(t *testing.T, within time.Duration, all ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		found := slices.ContainsFunc(p.log, func(line string) bool {
			for _, s := range all {
				if !strings.Contains(line, s) {
					return false
				}
			}
			return true
		})
		p.mu.Unlock()
		if found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no log line containing all of %q within %s", all, within)
}

func (p *process) addr(t *testing.T, server string) string {
	t.Helper()
	select {
	case a := <-p.addrs[server]:
		p.addrs[server] <- a // keep it for later calls
		return "http://" + a
	case <-p.exited:
		t.Fatalf("uproxy exited before serving %s: %v", server, p.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("uproxy did not report its %s address", server)
	}
	return ""
}

// waitExit waits for the process and returns its exit code.
func (p *process) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("uproxy did not exit within %s", within)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

// readName connects to addr and returns the backend's greeting.
func readName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading greeting: %w", err)
	}
	return strings.TrimSpace(line), nil
}
