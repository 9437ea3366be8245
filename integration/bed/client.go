package bed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Client is a namespace on the node bridge (10.244.0.200+) that plays a pod
// or an outside host sending traffic: default route via the node.
type Client struct {
	b    *Bed
	NS   *Netns
	IP   string
	IP6  string // fd00:10:244::<octet> in a dual-stack bed, else ""
	veth string
}

// NewClient creates a client namespace, removed in t.Cleanup.
func (b *Bed) NewClient(t testing.TB) *Client {
	t.Helper()
	c, err := b.newClient()
	if err != nil {
		t.Fatalf("client namespace: %v", err)
	}
	t.Cleanup(c.close)
	return c
}

func (b *Bed) newClient() (*Client, error) {
	octet, err := b.clientIPs.take()
	if err != nil {
		return nil, err
	}
	ns, err := NewNetns("client")
	if err != nil {
		b.clientIPs.release(octet)
		return nil, err
	}
	c := &Client{b: b, NS: ns, IP: podIP(octet), veth: fmt.Sprintf("vc%d", octet)}
	lines := []string{"link set eth0 address " + macFor(octet), "addr add " + c.IP + "/24 dev eth0",
		"link set eth0 up", "route add default via " + NodeIP}
	if b.opts.DualStack {
		c.IP6 = podIP6(octet)
		lines = append(lines, "addr add "+c.IP6+"/64 dev eth0 nodad", "route add ::/0 via "+NodeIP6)
		if err = enableIPv6(ns); err != nil {
			c.close()
			return nil, err
		}
	}
	err = b.Node.IPBatch(
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", c.veth, ns.Name),
		fmt.Sprintf("link set %s master %s", c.veth, BridgeName),
		fmt.Sprintf("link set %s up", c.veth),
	)
	if err == nil {
		err = ns.IPBatch(lines...)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *Client) close() {
	_ = c.b.Node.IP("link", "del", c.veth)
	_ = c.NS.Delete()
	var octet int
	if _, err := fmt.Sscanf(c.IP, "10.244.0.%d", &octet); err == nil {
		c.b.clientIPs.release(octet)
	}
}

// Result is one run of a client tool.
type Result struct {
	Out   string        // stdout
	Err   string        // stderr
	Code  int           // exit code (-1: not started or killed)
	Start time.Time     // when the process was started
	Dur   time.Duration // until it exited
}

// OK reports a zero exit code.
func (r Result) OK() bool { return r.Code == 0 }

func (r Result) String() string {
	return fmt.Sprintf("exit=%d dur=%v out=%q err=%q", r.Code, r.Dur.Round(time.Millisecond), r.Out, strings.TrimSpace(r.Err))
}

// Run runs argv in the client namespace with stdin.
func (c *Client) Run(ctx context.Context, stdin string, argv ...string) Result {
	return runResult(ctx, c.NS.Start, stdin, argv...)
}

// runResult runs argv, started by start, with stdin and collects a Result.
func runResult(ctx context.Context, start func(*exec.Cmd) error, stdin string, argv ...string) Result {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	r := Result{Code: -1, Start: time.Now()}
	if err := start(cmd); err != nil {
		r.Err = err.Error()
		return r
	}
	err := cmd.Wait()
	r.Dur = time.Since(r.Start)
	r.Out, r.Err = out.String(), errb.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
		r.Code = 0
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		r.Err += err.Error()
	}
	return r
}

// Curl fetches url with the real curl, one new connection: -sS --max-time.
func (c *Client) Curl(ctx context.Context, url string, maxTime time.Duration) Result {
	return c.Run(ctx, "", "curl", "-sS", "--max-time", fmt.Sprintf("%.3f", maxTime.Seconds()), url)
}

// NC sends input over TCP with netcat-openbsd (-N: half-close after input)
// and returns what came back.
func (c *Client) NC(ctx context.Context, host string, port int, input string, wait time.Duration) Result {
	secs := fmt.Sprintf("%d", max(1, int(wait.Seconds()+0.5)))
	return c.Run(ctx, input, "nc", "-N", "-w", secs, host, fmt.Sprint(port))
}

// NCUDP sends one datagram with nc -u and returns what came back within wait.
func (c *Client) NCUDP(ctx context.Context, host string, port int, input string, wait time.Duration) Result {
	secs := fmt.Sprintf("%d", max(1, int(wait.Seconds()+0.5)))
	return c.Run(ctx, input, "nc", "-u", "-w", secs, host, fmt.Sprint(port))
}

// Dig sends one DNS A query for name to server:port (+short: the answer only).
func (c *Client) Dig(ctx context.Context, server string, port int, name string) Result {
	return c.Run(ctx, "", "dig", "@"+server, "-p", fmt.Sprint(port), "+tries=1", "+time=2", "+short", name, "A")
}
