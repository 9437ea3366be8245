package iptables

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/svc"
)

func testLog(t testing.TB) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

var (
	nodeV4 = netip.MustParseAddr("10.0.0.1")
	nodeV6 = netip.MustParseAddr("fd00::1")
)

func baseConfig() Config {
	return Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{nodeV4, nodeV6}}
}

func newTestProgrammer(t testing.TB, cfg Config) (*Programmer, *fakeRunner, *fakeConntrack) {
	t.Helper()
	r, ct := newFakeRunner(), &fakeConntrack{}
	p, err := newProgrammer(cfg, testLog(t), r, ct, nowFunc())
	if err != nil {
		t.Fatalf("newProgrammer: %v", err)
	}
	return p, r, ct
}

// addrs parses a list of addresses.
func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// web is a TCP ClusterIP service port; options adjust it.
func web(proxyPort uint16, opts ...func(*svc.Port)) svc.Portal {
	p := svc.Port{
		Name:       svc.PortName{Namespace: "default", Name: "web", Port: "http"},
		Protocol:   svc.TCP,
		ClusterIPs: addrs("10.96.0.10"),
		Port:       80,
	}
	for _, o := range opts {
		o(&p)
	}
	return svc.Portal{Port: p, ProxyPort: proxyPort}
}

func TestNoOpSyncWritesNothing(t *testing.T) {
	p, r, _ := newTestProgrammer(t, baseConfig())
	ctx := context.Background()
	portals := []svc.Portal{web(30001, func(p *svc.Port) { p.NodePort = 30080 })}
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	// One restore per active family: IPv4, and IPv6 (the node has an IPv6
	// IP, so its chains and jumps exist even before IPv6 portals do).
	restores, saves := r.counts()
	if restores != 2 {
		t.Fatalf("first sync: %d restores, want 2", restores)
	}
	steps := []struct {
		name      string
		advance   time.Duration
		wantSaves int
	}{
		{"right after the write: no exec at all", 0, 0},
		{"within half a check period: no exec at all", DefaultCheckPeriod/2 - time.Second, 0},
		// The periodic tamper check: one read-only iptables-save per
		// active family (IPv4, and IPv6 since the node has an IPv6 IP).
		{"half a check period later: one read per family", time.Second, 2},
		{"again right after that read: nothing", time.Millisecond, 0},
	}
	for _, s := range steps {
		tick(p, s.advance)
		if err := p.SyncPortals(ctx, slices.Clone(portals)); err != nil {
			t.Fatal(err)
		}
		r2, s2 := r.counts()
		if r2 != restores {
			t.Fatalf("%s: wrote: %d restores, want %d; last input:\n%s", s.name, r2, restores, r.lastRestore())
		}
		if s2-saves != s.wantSaves {
			t.Fatalf("%s: %d saves, want %d", s.name, s2-saves, s.wantSaves)
		}
		saves = s2
	}
	if got := testutil.ToFloat64(p.m.repairs.WithLabelValues("ipv4")); got != 0 {
		t.Errorf("repairs = %v after no-op syncs, want 0", got)
	}
}

func TestAddAndDeleteService(t *testing.T) {
	p, r, _ := newTestProgrammer(t, baseConfig())
	ctx := context.Background()
	var portals []svc.Portal
	for i := range 20 {
		portals = append(portals, web(uint16(30000+i), func(p *svc.Port) {
			p.Name.Name = "svc" + string(rune('a'+i))
			p.ClusterIPs = addrs(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}).String())
		}))
	}
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	// Adding one service patches the chains: no redeclaration (flush) of
	// twenty services' rules, just two -A lines.
	added := web(31000, func(p *svc.Port) { p.Name.Name = "new"; p.ClusterIPs = addrs("10.96.2.1") })
	if err := p.SyncPortals(ctx, append(slices.Clone(portals), added)); err != nil {
		t.Fatal(err)
	}
	in := r.lastRestoreOf(v4)
	if strings.Contains(in, ":KUBE-") || strings.Count(in, "\n-A KUBE-PORTALS-") != 2 || strings.Count(in, "\n-A KUBE-NODEPORT-NON-LOCAL ") != 2 {
		t.Errorf("adding one service wrote:\n%s", in)
	}
	// Deleting it removes exactly its rules.
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	in = r.lastRestoreOf(v4)
	if strings.Count(in, "\n-D KUBE-PORTALS-") != 2 || strings.Count(in, "\n-D KUBE-NODEPORT-NON-LOCAL ") != 2 || strings.Contains(in, "\n-A ") {
		t.Errorf("deleting one service wrote:\n%s", in)
	}
	if save := r.state[v4].save(); strings.Contains(save, "default/new") {
		t.Errorf("deleted service still installed:\n%s", save)
	}
	// Deleting everything empties the chains but keeps them and the jumps.
	if err := p.SyncPortals(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(allJumps))
	if got := ourLines(r.state[v4].save()); !slices.Equal(got, want) {
		t.Errorf("after deleting all services:\n%s", strings.Join(got, "\n"))
	}
}

func TestTamperingIsRepaired(t *testing.T) {
	tests := map[string]struct {
		tamper      func(t *fakeTables)
		wantRepairs float64
	}{
		"jump from PREROUTING deleted": {
			tamper: func(t *fakeTables) {
				t.chains[tableNAT]["PREROUTING"] = slices.DeleteFunc(t.chains[tableNAT]["PREROUTING"],
					func(s string) bool { return strings.HasSuffix(s, "-j "+chainPortalsContainer) })
			},
			wantRepairs: 1,
		},
		"chain flushed": {
			tamper:      func(t *fakeTables) { t.chains[tableNAT][chainNodePortHost] = nil },
			wantRepairs: 1,
		},
		"rule changed (proxy port)": {
			tamper: func(t *fakeTables) {
				r := t.chains[tableNAT][chainPortalsContainer]
				r[0] = strings.Replace(r[0], "--to-ports 30001", "--to-ports 9", 1)
			},
			wantRepairs: 2, // one foreign rule removed, one restored
		},
		"foreign rule added to our chain": {
			tamper: func(t *fakeTables) {
				t.chains[tableFilter][chainNodePortNonLocal] = append(t.chains[tableFilter][chainNodePortNonLocal], "-p tcp -j ACCEPT")
			},
			wantRepairs: 1,
		},
		"duplicate jump inserted": {
			tamper: func(t *fakeTables) {
				t.chains[tableNAT]["OUTPUT"] = append(t.chains[tableNAT]["OUTPUT"], strings.TrimPrefix(jumpPortalsOut, "-A OUTPUT "))
			},
			wantRepairs: 1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, r, _ := newTestProgrammer(t, baseConfig())
			ctx := context.Background()
			portals := []svc.Portal{web(30001, func(p *svc.Port) { p.NodePort = 30080 })}
			if err := p.SyncPortals(ctx, portals); err != nil {
				t.Fatal(err)
			}
			want := ourLines(r.state[v4].save())
			r.edit(v4, tc.tamper)
			if slices.Equal(ourLines(r.state[v4].save()), want) {
				t.Fatal("tampering changed nothing")
			}
			tick(p, DefaultCheckPeriod/2) // the next periodic sync
			if err := p.SyncPortals(ctx, portals); err != nil {
				t.Fatal(err)
			}
			if got := ourLines(r.state[v4].save()); !slices.Equal(got, want) {
				t.Errorf("after repair:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got := testutil.ToFloat64(p.m.repairs.WithLabelValues("ipv4")); got != tc.wantRepairs {
				t.Errorf("repairs metric = %v, want %v", got, tc.wantRepairs)
			}
		})
	}
}

func TestStaleModelRetriesWithFullRewrite(t *testing.T) {
	p, r, _ := newTestProgrammer(t, baseConfig())
	ctx := context.Background()
	var keep []svc.Portal
	for i := range 4 {
		keep = append(keep, web(uint16(30010+i), func(p *svc.Port) {
			p.Name.Name = "keep" + string(rune('a'+i))
			p.ClusterIPs = addrs(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}).String())
		}))
	}
	b := web(30002, func(p *svc.Port) { p.Name.Name = "other"; p.ClusterIPs = addrs("10.96.0.11") })
	if err := p.SyncPortals(ctx, append(slices.Clone(keep), b)); err != nil {
		t.Fatal(err)
	}
	// Someone deletes b's rule; our next change wants to -D it, which fails
	// the atomic batch. The Programmer must read back and rewrite.
	r.edit(v4, func(t *fakeTables) {
		t.chains[tableNAT][chainPortalsHost] = slices.DeleteFunc(t.chains[tableNAT][chainPortalsHost],
			func(s string) bool { return strings.Contains(s, "default/other") })
	})
	if err := p.SyncPortals(ctx, keep); err != nil {
		t.Fatalf("SyncPortals: %v", err)
	}
	if save := r.state[v4].save(); strings.Contains(save, "default/other") {
		t.Errorf("b still installed:\n%s", save)
	}
	if got := testutil.ToFloat64(p.m.restores.WithLabelValues("ipv4", "failure")); got != 1 {
		t.Errorf("failed restores = %v, want 1", got)
	}
}

func TestRestoreFailure(t *testing.T) {
	p, r, _ := newTestProgrammer(t, baseConfig())
	r.restoreErr = errors.New("iptables-restore --noflush: exit status 1: iptables-restore: unable to initialize table 'nat' (input line 1: \"*nat\")")
	err := p.SyncPortals(context.Background(), []svc.Portal{web(30001)})
	if err == nil || !strings.Contains(err.Error(), "iptables-restore") || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("err = %v, want the restore error with command and line", err)
	}
	if got := testutil.ToFloat64(p.m.syncFailures); got != 1 {
		t.Errorf("sync failures = %v, want 1", got)
	}
	// The caller retries; once iptables works again the sync succeeds.
	r.restoreErr = nil
	if err := p.SyncPortals(context.Background(), []svc.Portal{web(30001)}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !strings.Contains(r.state[v4].save(), "default/web:http") {
		t.Error("rules missing after the retry")
	}
}

func TestNewErrors(t *testing.T) {
	tests := map[string]struct {
		cfg     Config
		detect4 error
		want    string
	}{
		"loopback bind address": {
			cfg:  Config{BindAddr: netip.MustParseAddr("127.0.0.1"), NodeIPs: []netip.Addr{nodeV4}},
			want: "loopback",
		},
		"no node IP with 0.0.0.0": {
			cfg:  Config{BindAddr: netip.IPv4Unspecified()},
			want: "no node IP",
		},
		"iptables missing": {
			cfg:     baseConfig(),
			detect4: errors.New(`iptables: exec: "iptables": executable file not found in $PATH`),
			want:    `"iptables": executable file not found`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newFakeRunner()
			r.detectErr[v4] = tc.detect4
			_, err := newProgrammer(tc.cfg, testLog(t), r, &fakeConntrack{}, nowFunc())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestIPv6ToolsMissing(t *testing.T) {
	r := newFakeRunner()
	r.detectErr[v6] = errors.New(`ip6tables: exec: "ip6tables": executable file not found in $PATH`)
	p, err := newProgrammer(baseConfig(), testLog(t), r, &fakeConntrack{}, nowFunc())
	if err != nil {
		t.Fatal(err)
	}
	dual := web(30001, func(p *svc.Port) { p.ClusterIPs = addrs("10.96.0.10", "fd00:96::10") })
	err = p.SyncPortals(context.Background(), []svc.Portal{dual})
	if err == nil || !strings.Contains(err.Error(), "ip6tables") {
		t.Fatalf("err = %v, want one naming ip6tables", err)
	}
	if !strings.Contains(r.state[v4].save(), "10.96.0.10/32") {
		t.Error("IPv4 rules not programmed although only ip6tables is missing")
	}
}

func TestInstalledProxyPortsAfterRestart(t *testing.T) {
	ctx := context.Background()
	p, r, _ := newTestProgrammer(t, baseConfig())
	portals := []svc.Portal{
		web(30001, func(p *svc.Port) { p.NodePort = 30080 }),
		web(30002, func(p *svc.Port) {
			p.Name.Port = ""
			p.Name.Name = "dns"
			p.Protocol = svc.UDP
			p.ClusterIPs = addrs("fd00:96::53")
			p.Name.Family = svc.IPv6
		}),
	}
	if err := p.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	// A new Programmer on the same "kernel" (a restarted uproxy).
	p2, err := newProgrammer(baseConfig(), testLog(t), r, &fakeConntrack{}, nowFunc())
	if err != nil {
		t.Fatal(err)
	}
	got, err := p2.InstalledProxyPorts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[svc.PortName]uint16{
		{Namespace: "default", Name: "web", Port: "http"}:     30001,
		{Namespace: "default", Name: "dns", Family: svc.IPv6}: 30002,
	}
	if len(got) != len(want) || got[portals[0].Port.Name] != 30001 || got[portals[1].Port.Name] != 30002 {
		t.Fatalf("InstalledProxyPorts = %v, want %v", got, want)
	}
	before, _ := r.counts()
	if err := p2.SyncPortals(ctx, portals); err != nil {
		t.Fatal(err)
	}
	if after, _ := r.counts(); after != before {
		t.Errorf("first sync after restart with the same ports wrote %d times:\n%s", after-before, r.lastRestore())
	}
}

func TestChangedServiceIsRerendered(t *testing.T) {
	ctx := context.Background()
	p, r, _ := newTestProgrammer(t, baseConfig())
	steps := []struct {
		name    string
		portal  svc.Portal
		want    string
		notWant string
	}{
		{"initial", web(30001), "--to-ports 30001", ""},
		{"proxy port changes", web(30002), "--to-ports 30002", "--to-ports 30001"},
		{"cluster IP changes", web(30002, func(p *svc.Port) { p.ClusterIPs = addrs("10.96.0.99") }), "-d 10.96.0.99/32", "-d 10.96.0.10/32"},
		{"service port changes", web(30002, func(p *svc.Port) { p.ClusterIPs = addrs("10.96.0.99"); p.Port = 8080 }), "--dport 8080", "--dport 80 "},
	}
	for _, s := range steps {
		if err := p.SyncPortals(ctx, []svc.Portal{s.portal}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		save := r.state[v4].save()
		if !strings.Contains(save, s.want) || (s.notWant != "" && strings.Contains(save, s.notWant)) {
			t.Errorf("%s: installed rules:\n%s", s.name, strings.Join(ourLines(save), "\n"))
		}
	}
}
