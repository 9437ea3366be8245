package reliability

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
	"github.com/uproxy/uproxy/proxy"
)

// world is one test's share of the shared bed: its Kubernetes namespace and
// a client namespace. Each test starts its own uproxy (options differ).
type world struct {
	t      *testing.T
	b      *bed.Bed
	ns     string
	ctx    context.Context
	client *bed.Client
}

func newWorld(t *testing.T, namespace string, timeout time.Duration) *world {
	t.Helper()
	b := bed.Shared(t)
	if _, ok := bed.UproxyBinary(); !ok {
		// Checked before any namespace work; StartUproxy would skip/fail too.
		p, _ := bed.UproxyBinary()
		if os.Getenv("CI") == "true" || os.Getenv("UPROXY_REQUIRE_ROOT") == "1" {
			t.Fatalf("uproxy binary %s missing: run `make build`", p)
		}
		t.Skipf("uproxy binary %s missing: run `make build`", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	w := &world{t: t, b: b, ctx: ctx}
	w.ns = b.Namespace(t, namespace)
	w.client = b.NewClient(t)
	return w
}

// Service ports of the echo service every test uses.
const (
	portHTTP = 80   // HTTP "Hello! I am Pod" (echoserver --http :8080)
	portTCP  = 7000 // line echo (echoserver --tcp-echo :7000)
	portUDP  = 53   // datagram echo (echoserver --udp-echo :5353)
)

// echoService is the deployed echo service.
type echoService struct {
	name string
	ip   string // ClusterIP
}

func (e echoService) url() string { return fmt.Sprintf("http://%s:%d/", e.ip, portHTTP) }
func (e echoService) tcpAddr() string {
	return net.JoinHostPort(e.ip, strconv.Itoa(portTCP))
}
func (e echoService) udpAddr() string {
	return net.JoinHostPort(e.ip, strconv.Itoa(portUDP))
}

// deployEcho creates a deployment of n echo pods and a service with an HTTP,
// a TCP line-echo and a UDP echo port, and waits for the endpoints.
func (w *world) deployEcho(name string, n int32) echoService {
	w.t.Helper()
	d := bed.EchoDeployment(name, n,
		corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "tcp-echo", ContainerPort: 7000, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "udp-echo", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	if _, err := w.b.Client.AppsV1().Deployments(w.ns).Create(w.ctx, d, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	if err := w.b.WaitDeployment(w.ctx, w.ns, name); err != nil {
		w.t.Fatal(err)
	}
	svc := bed.ServiceFor(name,
		bed.TCPPort("http", portHTTP, 8080),
		bed.TCPPort("tcp", portTCP, 7000),
		corev1.ServicePort{Name: "udp", Protocol: corev1.ProtocolUDP, Port: portUDP, TargetPort: intstr.FromInt32(5353)})
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.b.WaitEndpoints(w.ctx, w.ns, name, int(n)); err != nil {
		w.t.Fatal(err)
	}
	return echoService{name: name, ip: created.Spec.ClusterIP}
}

// waitServed waits until the service answers through uproxy on every port.
func (w *world) waitServed(e echoService) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	if _, err := w.client.WaitHello(ctx, e.url()); err != nil {
		w.t.Fatal(err)
	}
	if err := bed.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		c, err := w.dialTCP(e.tcpAddr(), time.Second)
		if err != nil {
			return false, nil
		}
		defer c.Close()
		return ping(c, time.Second) == nil, nil
	}); err != nil {
		w.t.Fatalf("TCP echo %s never answered: %v", e.tcpAddr(), err)
	}
}

// dialTCP connects from the client namespace.
func (w *world) dialTCP(addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	return w.client.NS.DialContext(ctx, "tcp", addr)
}

// ping sends one line on a line-echo connection and reads it back.
func ping(c net.Conn, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo: got %q", buf)
	}
	return nil
}

func (w *world) sleep(d time.Duration) {
	select {
	case <-w.ctx.Done():
	case <-time.After(d):
	}
}

// metrics scrapes uproxy's /metrics in the node namespace.
func (w *world) metrics() string {
	w.t.Helper()
	code, body, err := w.b.HTTPGet(w.ctx, "http://"+bed.MetricsAddr+"/metrics")
	if err != nil || code != 200 {
		w.t.Fatalf("/metrics: %d %v", code, err)
	}
	return body
}

// metric sums the samples of name whose label text contains every one of
// labels (e.g. `service_port="ns/echo:tcp"`); ok is false when none matched.
func metric(text, name string, labels ...string) (sum float64, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		rest, found := strings.CutPrefix(line, name)
		if !found || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		lbl := ""
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbl, rest = rest[:end+1], rest[end+1:]
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(lbl, l)
		}
		if !match {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		ok = true
	}
	return sum, ok
}

// mustMetric is metric on a fresh scrape, failing when absent.
func (w *world) mustMetric(name string, labels ...string) float64 {
	w.t.Helper()
	v, ok := metric(w.metrics(), name, labels...)
	if !ok {
		w.t.Fatalf("metric %s%v not exported", name, labels)
	}
	return v
}

func (w *world) portLabel(e echoService, port string) string {
	return fmt.Sprintf(`service_port="%s/%s:%s"`, w.ns, e.name, port)
}

// services reads /debug/services?format=json.
func (w *world) services() ([]proxy.PortStatus, error) {
	code, body, err := w.b.HTTPGet(w.ctx, "http://"+bed.MetricsAddr+"/debug/services?format=json")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("/debug/services: %d %s", code, body)
	}
	var out []proxy.PortStatus
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return nil, fmt.Errorf("/debug/services: %w", err)
	}
	return out, nil
}

// portStatus returns the /debug/services entry of the echo service's port.
func (w *world) portStatus(e echoService, port string) (proxy.PortStatus, error) {
	all, err := w.services()
	if err != nil {
		return proxy.PortStatus{}, err
	}
	want := fmt.Sprintf("%s/%s:%s", w.ns, e.name, port)
	for _, p := range all {
		if p.Name == want {
			return p, nil
		}
	}
	return proxy.PortStatus{}, fmt.Errorf("%s not in /debug/services", want)
}

// procStats are a process's resources as /proc shows them.
type procStats struct {
	FDs     int
	RSSKiB  int64
	Threads int
	CPU     time.Duration // user+system
}

func (s procStats) String() string {
	return fmt.Sprintf("fds=%d rss=%.1fMiB threads=%d", s.FDs, float64(s.RSSKiB)/1024, s.Threads)
}

func readProc(pid int) (procStats, error) {
	var s procStats
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(ents)
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSSKiB, _ = strconv.ParseInt(fs[0], 10, 64)
		case "Threads":
			s.Threads, _ = strconv.Atoi(fs[0])
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may contain spaces): utime is
	// field 14, stime 15 (1-based), in clock ticks (100 Hz on Linux).
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
		fs := strings.Fields(string(stat)[i+1:])
		if len(fs) > 13 {
			ut, _ := strconv.ParseInt(fs[11], 10, 64)
			st, _ := strconv.ParseInt(fs[12], 10, 64)
			s.CPU = time.Duration(ut+st) * 10 * time.Millisecond
		}
	}
	return s, sc.Err()
}

// summary prints the test's one SUMMARY line.
func summary(name, format string, args ...any) {
	fmt.Printf("SUMMARY %s: %s\n", name, fmt.Sprintf(format, args...))
}
