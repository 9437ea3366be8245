package iptables

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNewMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(Config{BindAddr: netip.IPv4Unspecified(), NodeIPs: []netip.Addr{nodeV4}}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "iptables") || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("err = %v, want one naming iptables and saying it is not found", err)
	}
	t.Logf("New without iptables: %v", err)
}

func TestNewBadBackend(t *testing.T) {
	_, err := New(Config{Backend: "ebpf", NodeIPs: []netip.Addr{nodeV4}}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "ebpf") {
		t.Fatalf("err = %v", err)
	}
}

func TestInNetNSRejectsPaths(t *testing.T) {
	for _, name := range []string{"../etc", "a/b", "..", "."} {
		if err := inNetNS(name, func() error { return nil }); err == nil {
			t.Errorf("inNetNS(%q) accepted", name)
		}
	}
}
