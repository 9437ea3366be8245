package iptables

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// nowFunc is a frozen clock: syncs never find the last read stale unless a
// test advances it.
func nowFunc() func() time.Time {
	t := time.Unix(1_700_000_000, 0)
	return func() time.Time { return t }
}

// tick moves a test Programmer's clock forward.
func tick(p *Programmer, d time.Duration) {
	old := p.now
	p.now = func() time.Time { return old().Add(d) }
}

// legacyState fills a fake kernel with what legacy userspace kube-proxy
// left behind, plus rules that belong to someone else.
func legacyState(t *fakeTables) {
	nat, filter := t.chains[tableNAT], t.chains[tableFilter]
	for _, c := range []string{chainPortalsContainer, chainPortalsHost, chainNodePortContainer, chainNodePortHost, "DOCKER", "CUSTOM"} {
		nat[c] = nil
		t.order[tableNAT] = append(t.order[tableNAT], c)
	}
	filter[chainNodePortNonLocal] = nil
	t.order[tableFilter] = append(t.order[tableFilter], chainNodePortNonLocal)

	nat["PREROUTING"] = []string{
		`-m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-CONTAINER`,
		`-m addrtype --dst-type LOCAL -j DOCKER`,
		`-m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-CONTAINER`,
	}
	nat["OUTPUT"] = []string{
		`-m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-HOST`,
		`-j KUBE-PORTALS-HOST`, // an older variant without comment
		`-m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-HOST`,
	}
	nat["CUSTOM"] = []string{`-d 10.1.0.0/16 -j KUBE-PORTALS-HOST`}
	nat["DOCKER"] = []string{`-i docker0 -j RETURN`}
	nat[chainPortalsContainer] = []string{`-d 10.0.0.10/32 -p tcp -m comment --comment "default/kubernetes:https" -m tcp --dport 443 -j REDIRECT --to-ports 36001`}
	nat[chainPortalsHost] = []string{`-d 10.0.0.10/32 -p tcp -m comment --comment "default/kubernetes:https" -m tcp --dport 443 -j DNAT --to-destination 10.240.0.2:36001`}
	filter["INPUT"] = []string{`-m comment --comment "Ensure that non-local NodePort traffic can flow" -j KUBE-NODEPORT-NON-LOCAL`, `-i lo -j ACCEPT`}
	filter[chainNodePortNonLocal] = []string{`-p tcp -m comment --comment "default/web:http" -m tcp --dport 36002 -m state --state NEW -j ACCEPT`}
}

func TestCleanupRemovesOursAndLegacy(t *testing.T) {
	tests := map[string]struct {
		setup func(t *testing.T, r *fakeRunner)
	}{
		"legacy userspace kube-proxy leftovers": {
			setup: func(_ *testing.T, r *fakeRunner) { r.edit(v4, legacyState) },
		},
		"uproxy's own rules in both families": {
			setup: func(t *testing.T, r *fakeRunner) {
				p, err := newProgrammer(baseConfig(), testLog(t), r, &fakeConntrack{}, nowFunc())
				if err != nil {
					t.Fatal(err)
				}
				dual := web(30001, func(p *svc.Port) { p.ClusterIPs = addrs("10.96.0.10", "fd00:96::10"); p.NodePort = 30080 })
				if err := p.SyncPortals(context.Background(), []svc.Portal{dual}); err != nil {
					t.Fatal(err)
				}
			},
		},
		"nothing installed": {setup: func(*testing.T, *fakeRunner) {}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newFakeRunner()
			tc.setup(t, r)
			before := r.state[v4].save()
			for run := range 2 { // idempotent: the second run finds nothing
				n := len(r.deletes)
				if err := cleanup(context.Background(), r, testLog(t)); err != nil {
					t.Fatalf("cleanup run %d: %v", run, err)
				}
				if run == 1 && len(r.deletes) != n {
					t.Errorf("second cleanup deleted again: %v", r.deletes[n:])
				}
			}
			for _, f := range families {
				save := r.state[f].save()
				if strings.Contains(save, "KUBE-PORTALS") || strings.Contains(save, "KUBE-NODEPORT") {
					t.Errorf("%s: leftovers after cleanup:\n%s", f, save)
				}
			}
			// Someone else's rules stay.
			for _, keep := range []string{"-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER", "-A DOCKER -i docker0 -j RETURN", "-A INPUT -i lo -j ACCEPT"} {
				if strings.Contains(before, keep) && !strings.Contains(r.state[v4].save(), keep) {
					t.Errorf("cleanup removed a foreign rule: %s", keep)
				}
			}
		})
	}
}

func TestCheckPeriodRepairsWhileChurning(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	r, ct := newFakeRunner(), &fakeConntrack{}
	cfg := baseConfig()
	cfg.CheckPeriod = 30 * time.Second
	p, err := newProgrammer(cfg, testLog(t), r, ct, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Every sync changes something (a new proxy port each time).
	sync := func(port uint16) {
		t.Helper()
		if err := p.SyncPortals(ctx, []svc.Portal{web(port)}); err != nil {
			t.Fatal(err)
		}
	}
	sync(30001)
	r.edit(v4, func(t *fakeTables) { t.chains[tableNAT]["OUTPUT"] = nil }) // jumps deleted
	clock = clock.Add(10 * time.Second)
	sync(30002)
	if strings.Contains(r.state[v4].save(), jumpPortalsOut) {
		t.Fatal("repaired before the check period passed: the change sync read anyway")
	}
	clock = clock.Add(25 * time.Second)
	sync(30003)
	if got := ourLines(r.state[v4].save()); !strings.Contains(strings.Join(got, "\n"), jumpPortalsOut) {
		t.Errorf("OUTPUT jump not repaired after the check period:\n%s", strings.Join(got, "\n"))
	}
}
