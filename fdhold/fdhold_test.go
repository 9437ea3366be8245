package fdhold

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// serveHolder runs a holder on path until the returned stop is called;
// stop checks that Serve ended cleanly and closed every socket it held.
func serveHolder(t *testing.T, path string) (*Holder, func()) {
	t.Helper()
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHolder(zerolog.New(zerolog.NewTestWriter(t)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			if n := h.count(); n != 0 {
				t.Errorf("holder still holds %d sockets after Serve returned", n)
			}
		})
	}
	t.Cleanup(stop)
	return h, stop
}

// startHolder runs a holder on a socket in a temporary directory until the
// test ends.
func startHolder(t *testing.T) (*Holder, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fds.sock")
	h, _ := serveHolder(t, path)
	return h, path
}

// runKeeper loads a keeper and runs it until the returned stop is called.
func runKeeper(t *testing.T, path string) (*Keeper, func()) {
	t.Helper()
	k := Load(context.Background(), path, time.Second, zerolog.New(zerolog.NewTestWriter(t)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = k.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return k, stop
}

func waitHeld(t *testing.T, h *Holder, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.count() != n {
		if time.Now().After(deadline) {
			t.Fatalf("holder holds %d sockets, want %d", h.count(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestListenerOutlivesItsProcess: a connection made while no keeper runs
// waits in the held listener's queue, and the next keeper's listener
// accepts it, data and all; a datagram sent meanwhile is read likewise.
func TestListenerOutlivesItsProcess(t *testing.T) {
	h, path := startHolder(t)
	k, stop := runKeeper(t, path)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tkey, ukey := Key("tcp", ln.Addr().String()), Key("udp", pc.LocalAddr().String())
	k.Keep(tkey, ln)
	k.Keep(ukey, pc)
	waitHeld(t, h, 2)

	// "uproxy dies": its keeper and its copies go.
	stop()
	taddr, uaddr := ln.Addr().String(), pc.LocalAddr().String()
	_ = ln.Close()
	_ = pc.Close()

	c, err := net.DialTimeout("tcp", taddr, time.Second)
	if err != nil {
		t.Fatalf("dial while no uproxy runs: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	u, err := net.Dial("udp", uaddr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("datagram")); err != nil {
		t.Fatal(err)
	}

	// The next run takes both back.
	k2, _ := runKeeper(t, path)
	f := k2.Take(tkey)
	if f == nil {
		t.Fatalf("no inherited socket under %q", tkey)
	}
	ln2, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	ac, err := ln2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	buf := make([]byte, 6)
	_ = ac.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(ac, buf); err != nil || string(buf) != "queued" {
		t.Fatalf("accepted connection read %q, %v", buf, err)
	}
	uf := k2.Take(ukey)
	if uf == nil {
		t.Fatalf("no inherited socket under %q", ukey)
	}
	pc2, err := net.FilePacketConn(uf)
	uf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer pc2.Close()
	_ = pc2.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 64)
	n, _, err := pc2.ReadFrom(b)
	if err != nil || string(b[:n]) != "datagram" {
		t.Fatalf("inherited UDP socket read %q, %v", b[:n], err)
	}
}

// TestDropAndSettle: a dropped listener is released by the holder (its
// port then refuses), and Settle releases inherited sockets nobody took,
// but not before.
func TestDropAndSettle(t *testing.T) {
	h, path := startHolder(t)
	k, stop := runKeeper(t, path)
	var lns []*net.TCPListener
	for range 3 {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		k.Keep(Key("tcp", ln.Addr().String()), ln)
	}
	waitHeld(t, h, 3)
	k.Drop(Key("tcp", lns[0].Addr().String())) // not settled: a first run has nothing inherited
	k.Settle()
	waitHeld(t, h, 2)
	addr0 := lns[0].Addr().String()
	_ = lns[0].Close()
	if c, err := net.DialTimeout("tcp", addr0, time.Second); err == nil {
		c.Close()
		t.Errorf("a dropped listener's port still accepts")
	}
	stop()
	for _, ln := range lns[1:] {
		_ = ln.Close()
	}

	k2, _ := runKeeper(t, path)
	keep := Key("tcp", lns[1].Addr().String())
	f := k2.Take(keep)
	if f == nil {
		t.Fatalf("no inherited %q", keep)
	}
	ln1, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln1.Close()
	k2.Keep(keep, ln1.(*net.TCPListener))
	time.Sleep(50 * time.Millisecond) // Run applies; nothing may be deleted before Settle
	if n := h.count(); n != 2 {
		t.Fatalf("before Settle the holder holds %d, want 2", n)
	}
	k2.Settle()
	waitHeld(t, h, 1)
}

// TestHolderRestart: a keeper whose holder went away hands every open
// listener to the next holder.
func TestHolderRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fds.sock")
	h1, stop1 := serveHolder(t, path)
	k, _ := runKeeper(t, path)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	k.Keep(Key("tcp", ln.Addr().String()), ln)
	k.Settle()
	waitHeld(t, h1, 1)
	stop1()
	h2, _ := serveHolder(t, path)
	waitHeld(t, h2, 1)
}

// TestHolderStays: true while the holder is connected and stays; false at
// once when it hangs up (it got SIGTERM with uproxy: the pod is going away)
// or was never reached.
func TestHolderStays(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fds.sock")
	_, stop := serveHolder(t, path)
	k, _ := runKeeper(t, path)
	if !k.HolderStays(50 * time.Millisecond) {
		t.Fatal("HolderStays false while the holder runs")
	}
	go func() { time.Sleep(50 * time.Millisecond); stop() }()
	start := time.Now()
	if k.HolderStays(5 * time.Second) {
		t.Fatal("HolderStays true although the holder stopped")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("HolderStays noticed the hang-up after %v", d)
	}
	lone := Load(context.Background(), filepath.Join(t.TempDir(), "none.sock"), 0, zerolog.Nop())
	if lone.HolderStays(time.Millisecond) {
		t.Error("HolderStays true without a holder")
	}
}
