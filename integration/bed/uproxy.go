package bed

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Default uproxy endpoints inside the node namespace.
const (
	HealthzAddr = "127.0.0.1:10256"
	MetricsAddr = "127.0.0.1:10249"
)

// UproxyOptions configure StartUproxy.
type UproxyOptions struct {
	// Binary defaults to $UPROXY_BIN, else <repo>/bin/uproxy (`make build`).
	Binary string
	// PortalMode is --portal-mode (default "iptables").
	PortalMode string
	// SyncPeriod and MinSyncPeriod are --iptables-sync-period (default 30s)
	// and --iptables-min-sync-period (default 100ms).
	SyncPeriod, MinSyncPeriod time.Duration
	// LogLevel is --log-level (default "info").
	LogLevel string
	// Admin runs uproxy with the admin kubeconfig instead of the
	// system:kube-proxy identity.
	Admin bool
	// Args are appended to the command line.
	Args []string
	// NoWait skips waiting for /healthz to answer 200.
	NoWait bool
	// Env is added to the process's environment (e.g. GOMAXPROCS=1).
	Env []string
}

// Uproxy is a uproxy process in the node namespace.
type Uproxy struct {
	b    *Bed
	Proc *Proc
	Args []string
}

// UproxyBinary returns the uproxy binary path and whether it exists.
func UproxyBinary() (string, bool) {
	p := os.Getenv("UPROXY_BIN")
	if p == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", false
		}
		p = filepath.Join(root, "bin", "uproxy")
	}
	st, err := os.Stat(p)
	return p, err == nil && !st.IsDir()
}

// UproxyArgs returns the command line (without the binary) StartUproxy runs
// for o: the bed's kubeconfig and node name, o's periods, portal mode and log
// level (defaults 30s, 100ms, iptables, info), the bed's healthz and metrics
// addresses, a 5s shutdown grace, then o.Args. Tests that start uproxy
// themselves (to SIGKILL it, or to run two at once) use it too.
func (b *Bed) UproxyArgs(o UproxyOptions) []string {
	if o.PortalMode == "" {
		o.PortalMode = "iptables"
	}
	if o.SyncPeriod == 0 {
		o.SyncPeriod = 30 * time.Second
	}
	if o.MinSyncPeriod == 0 {
		o.MinSyncPeriod = 100 * time.Millisecond
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	kc := b.ProxyKubeconfig
	if o.Admin {
		kc = b.AdminKubeconfig
	}
	return append([]string{
		"--kubeconfig", kc, "--hostname-override", NodeName,
		"--iptables-sync-period", o.SyncPeriod.String(), "--iptables-min-sync-period", o.MinSyncPeriod.String(),
		"--healthz-bind-address", HealthzAddr, "--metrics-bind-address", MetricsAddr,
		"--portal-mode", o.PortalMode, "--log-level", o.LogLevel, "--shutdown-grace", "5s",
	}, o.Args...)
}

// StartUproxy runs uproxy in the node namespace and waits for /healthz. In
// t.Cleanup it is stopped with SIGTERM (it must exit 0 within 10 s); on test
// failure its log tail is printed. Its iptables rules live only in the node
// namespace and go away with it.
func (b *Bed) StartUproxy(t testing.TB, o UproxyOptions) *Uproxy {
	t.Helper()
	if o.Binary == "" {
		var ok bool
		if o.Binary, ok = UproxyBinary(); !ok {
			skipOrFatal(t, "uproxy binary %s missing: run `make build`", o.Binary)
		}
	}
	args := b.UproxyArgs(o)
	// In the bed directory, which Main keeps when a test failed.
	logPath := b.path(fmt.Sprintf("uproxy-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano()))
	p, err := StartProc(b.Node, "uproxy", logPath, o.Env, append([]string{o.Binary}, args...)...)
	if err != nil {
		t.Fatalf("start uproxy: %v", err)
	}
	u := &Uproxy{b: b, Proc: p, Args: args}
	t.Logf("uproxy started: %s %s (log %s)", o.Binary, strings.Join(args, " "), logPath)
	t.Cleanup(func() {
		err, killed := p.Stop(10 * time.Second)
		if killed || err != nil {
			t.Errorf("uproxy did not exit cleanly on SIGTERM: err=%v killed=%v", err, killed)
		}
		if t.Failed() {
			t.Logf("uproxy log tail (%s):\n%s", logPath, p.Tail(60))
			if rules, err := b.NATRules(context.Background()); err == nil {
				t.Logf("iptables -t nat in node namespace after stop:\n%s", rules)
			}
		}
	})
	if !o.NoWait {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := u.WaitHealthy(ctx); err != nil {
			t.Fatalf("uproxy not healthy: %v\nlog tail:\n%s", err, p.Tail(40))
		}
	}
	return u
}

// WaitHealthy polls /healthz until it answers 200.
func (u *Uproxy) WaitHealthy(ctx context.Context) error {
	var last string
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if done, werr := u.Proc.Exited(); done {
			return false, fmt.Errorf("uproxy exited: %v", werr)
		}
		code, body, err := u.b.HTTPGet(ctx, "http://"+HealthzAddr+"/healthz")
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
		return code == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last /healthz: %s)", err, last)
	}
	return nil
}

// HTTPGet fetches url from inside the node namespace (loopback addresses of
// the node: uproxy's /healthz, /metrics, /debug/services).
func (b *Bed) HTTPGet(ctx context.Context, url string) (int, string, error) {
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: b.Node.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// NATRules returns `iptables-save -t nat` of the node namespace.
func (b *Bed) NATRules(ctx context.Context) (string, error) {
	return b.Node.Output(ctx, "iptables-save", "-t", "nat")
}

// WaitHello curls url from the client until a pod answers (the proxy has
// programmed the service) or ctx ends.
func (c *Client) WaitHello(ctx context.Context, url string) (Result, error) {
	var r Result
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		r = c.Curl(ctx, url, time.Second)
		_, ok := ParseHello(r.Out)
		return r.OK() && ok, nil
	})
	if err != nil {
		return r, fmt.Errorf("%s never answered (last: %s): %w", url, r, err)
	}
	return r, nil
}
