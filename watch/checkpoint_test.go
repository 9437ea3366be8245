package watch

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// testCheckpoint is a checkpoint of node-1 with a UDP port and a dual-stack
// TCP port (one port per family).
func testCheckpoint() *Checkpoint {
	web := svc.Port{Name: pn("ns", "web", "http"), Protocol: svc.TCP, ClusterIPs: addrs("10.96.0.10"), Port: 80,
		NodePort: 30080, ExternalIPs: addrs("192.0.2.1"), Affinity: svc.Affinity{ClientIP: true, Timeout: time.Minute}}
	web6 := web
	web6.Name, web6.ClusterIPs, web6.ExternalIPs = pn6("ns", "web", "http"), addrs("fd00::10"), nil
	dns := svc.Port{Name: pn("ns", "dns", ""), Protocol: svc.UDP, ClusterIPs: addrs("10.96.0.53"), Port: 53, InternalLocal: true}
	return &Checkpoint{
		Node:    "node-1",
		Written: time.Unix(1_700_000_000, 123).UTC(),
		NodeIPs: addrs("10.0.0.1"),
		Ports: []CheckpointPort{
			{Port: dns, Endpoints: []svc.Endpoint{withNode(readyEP("10.244.0.5:5353"), "node-1")}},
			{Port: web, Endpoints: []svc.Endpoint{readyEP("10.244.0.1:8080")}},
			{Port: web6, Endpoints: []svc.Endpoint{termEP("[fd00::1]:8080")}},
		},
	}
}

func writeCheckpoint(t *testing.T, c *Checkpoint) string {
	t.Helper()
	b, err := encodeCheckpoint(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state.json")
	if err := writeFileAtomic(path, b); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckpointRoundTrip(t *testing.T) {
	tests := map[string]func(c *Checkpoint){
		"tcp and udp, dual-stack, affinity": func(*Checkpoint) {},
		"no services":                       func(c *Checkpoint) { c.Ports = nil },
		"port without endpoints":            func(c *Checkpoint) { c.Ports[1].Endpoints = nil },
		"no node IPs":                       func(c *Checkpoint) { c.NodeIPs = nil },
		"beside kube-proxy":                 func(c *Checkpoint) { c.ServiceProxyName = "uproxy" },
	}
	for name, mod := range tests {
		t.Run(name, func(t *testing.T) {
			want := testCheckpoint()
			mod(want)
			got, err := LoadCheckpoint(Options{CheckpointPath: writeCheckpoint(t, want), NodeName: "node-1", ServiceProxyName: want.ServiceProxyName})
			if err != nil {
				t.Fatal(err)
			}
			if len(want.Ports) == 0 {
				want.Ports = got.Ports // nil and empty are the same state
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestCheckpointRejected(t *testing.T) {
	good, err := encodeCheckpoint(testCheckpoint())
	if err != nil {
		t.Fatal(err)
	}
	encode := func(mod func(*Checkpoint)) []byte {
		c := testCheckpoint()
		mod(c)
		b, err := encodeCheckpoint(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := map[string]struct {
		data      []byte
		node      string
		proxyName string // --service-proxy-name of the reader
		want      string // in the error
	}{
		"empty file":         {data: nil, want: "not a checkpoint"},
		"garbage":            {data: []byte("\x00\x01not json"), want: "not a checkpoint"},
		"truncated":          {data: good[:len(good)/2], want: "not a checkpoint"},
		"state byte flipped": {data: bytes.Replace(good, []byte(`"10.244.0.1:8080"`), []byte(`"10.244.0.9:8080"`), 1), want: "checksum mismatch"},
		"checksum edited":    {data: bytes.Replace(good, []byte(`"sha256:`), []byte(`"sha256:00`), 1), want: "checksum mismatch"},
		"wrong version":      {data: bytes.Replace(good, []byte(`{"version":1,`), []byte(`{"version":2,`), 1), want: "format version 2"},
		"no version":         {data: bytes.Replace(good, []byte(`{"version":1,`), []byte(`{`), 1), want: "format version 0"},
		"wrong node":         {data: good, node: "node-2", want: `written on node "node-1", this is node "node-2"`},
		"other proxy name":   {data: good, proxyName: "uproxy", want: `written for --service-proxy-name "", this uproxy has "uproxy"`},
		"port 0":             {data: encode(func(c *Checkpoint) { c.Ports[0].Port.Port = 0 }), want: "port 0"},
		"bad protocol":       {data: encode(func(c *Checkpoint) { c.Ports[0].Port.Protocol = "SCTP" }), want: "protocol"},
		"no service name":    {data: encode(func(c *Checkpoint) { c.Ports[0].Port.Name.Name = "" }), want: "no service name"},
		"port twice":         {data: encode(func(c *Checkpoint) { c.Ports[1].Port.Name = c.Ports[0].Port.Name }), want: "twice"},
		"no cluster IP":      {data: encode(func(c *Checkpoint) { c.Ports[0].Port.ClusterIPs = nil }), want: "no cluster IP"},
		"invalid portal IP":  {data: encode(func(c *Checkpoint) { c.Ports[1].Port.ExternalIPs = []netip.Addr{{}} }), want: "invalid portal address"},
		"endpoint port 0":    {data: encode(func(c *Checkpoint) { c.Ports[0].Endpoints[0].Addr = netip.MustParseAddrPort("10.0.0.1:0") }), want: "invalid endpoint"},
		"endpoint not serving": {data: encode(func(c *Checkpoint) { c.Ports[0].Endpoints[0] = svc.Endpoint{Addr: c.Ports[0].Endpoints[0].Addr} }),
			want: "neither ready nor serving-terminating"},
		"no write time": {data: encode(func(c *Checkpoint) { c.Written = time.Time{} }), want: "no write time"},
		// A checkpoint of a version that merged a dual-stack port's
		// families (issue 15 item 3): one IPv4-named port with both.
		"families merged in one port": {data: encode(func(c *Checkpoint) {
			c.Ports[1].Port.ClusterIPs = addrs("10.96.0.10", "fd00::10")
		}), want: "portal address fd00::10 not of family IPv4"},
		"IPv6 endpoint of an IPv4 port": {data: encode(func(c *Checkpoint) {
			c.Ports[1].Endpoints = append(c.Ports[1].Endpoints, readyEP("[fd00::2]:8080"))
		}), want: "endpoint [fd00::2]:8080 not of family IPv4"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			node := tc.node
			if node == "" {
				node = "node-1"
			}
			c, err := LoadCheckpoint(Options{CheckpointPath: path, NodeName: node, ServiceProxyName: tc.proxyName})
			if err == nil {
				t.Fatalf("loaded %+v, want an error", c)
			}
			if errors.Is(err, ErrNoCheckpoint) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := LoadCheckpoint(Options{CheckpointPath: filepath.Join(t.TempDir(), "state.json"), NodeName: "node-1"})
		if !errors.Is(err, ErrNoCheckpoint) {
			t.Fatalf("error %v, want ErrNoCheckpoint", err)
		}
	})
}

func TestWriteFileAtomic(t *testing.T) {
	tests := map[string]struct {
		old     []byte // existing file; nil: none
		noDir   bool   // the directory does not exist
		wantErr bool
	}{
		"new file":              {},
		"replaces the old file": {old: []byte("old contents")},
		"missing directory":     {noDir: true, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.noDir {
				dir = filepath.Join(dir, "absent")
			}
			path := filepath.Join(dir, "state.json")
			if tc.old != nil {
				if err := os.WriteFile(path, tc.old, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := writeFileAtomic(path, []byte("new contents"))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != "new contents" {
				t.Fatalf("file %q, %v", got, err)
			}
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
				t.Fatalf("mode %v, %v; want 0644", st.Mode(), err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("temporary files left: %v", ents)
			}
		})
	}

	// A reader never sees a mix of two versions: every read is one of
	// the complete files written.
	t.Run("readers see whole files", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "state.json")
		a, b := bytes.Repeat([]byte("a"), 64<<10), bytes.Repeat([]byte("b"), 96<<10)
		if err := writeFileAtomic(path, a); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var bad []string
		var mu sync.Mutex // guards bad
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := os.ReadFile(path)
				if err != nil || !(bytes.Equal(got, a) || bytes.Equal(got, b)) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("err %v, %d bytes", err, len(got)))
					mu.Unlock()
				}
			}
		})
		for i := range 50 {
			data := a
			if i%2 == 0 {
				data = b
			}
			if err := writeFileAtomic(path, data); err != nil {
				t.Error(err)
			}
		}
		close(stop)
		wg.Wait()
		if len(bad) > 0 {
			t.Fatalf("%d reads saw a partial file: %v", len(bad), bad[:min(len(bad), 3)])
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("temporary files left: %v", ents)
		}
	})
}

// FuzzDecodeCheckpoint: any bytes are rejected or accepted without a panic,
// and an accepted checkpoint encodes to one that decodes the same.
func FuzzDecodeCheckpoint(f *testing.F) {
	good, err := encodeCheckpoint(testCheckpoint())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1,"checksum":"","state":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCheckpoint(b, "node-1", "")
		if err != nil {
			return
		}
		again, err := encodeCheckpoint(c)
		if err != nil {
			t.Fatalf("accepted checkpoint does not encode: %v", err)
		}
		c2, err := decodeCheckpoint(again, "node-1", "")
		if err != nil {
			t.Fatalf("re-encoded checkpoint rejected: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed it:\n%+v\n%+v", c, c2)
		}
	})
}
