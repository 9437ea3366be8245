package main

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/healthcheck"
	"github.com/uproxy/uproxy/watch"
)

// TestServiceHealthSharesPorts: two instances (a DaemonSet surge) both open
// a Service's health check node port, and the first one's Close leaves the
// port to the second.
func TestServiceHealthSharesPorts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	opts := &options{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	log := zerolog.New(zerolog.NewTestWriter(t))
	tracker := watch.NewTracker(watch.Options{NodeName: "me"}, log)
	name := healthcheck.Service{Namespace: "ns", Name: "lb"}
	var servers []*healthcheck.Server
	for range 2 {
		s := newServiceHealth(opts, "me", tracker, newHealthServer(func() syncState { return syncState{Synced: true} }, time.Minute), log)
		t.Cleanup(s.Close)
		s.Sync(map[healthcheck.Service]uint16{name: port}, map[healthcheck.Service]int{name: 1})
		servers = append(servers, s)
	}
	addr := "127.0.0.1:" + strconv.Itoa(int(port))
	for i := range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d with both open: %v (the second instance could not share the port)", i, err)
		}
		c.Close()
	}
	servers[0].Close()
	for i := range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d after the first instance closed: %v", i, err)
		}
		c.Close()
	}
}
