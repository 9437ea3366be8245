package fdhold

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// reconnectEvery is how often the keeper retries a lost holder (a holder
// container restarted by kubelet comes back empty and gets every socket
// again).
const reconnectEvery = time.Second

// Keeper is uproxy's side: it takes back the sockets a previous run left
// with the holder and keeps the holder's copies in step with the open
// listeners. Keep, Drop, Take and Settle only record (they are called under
// the proxier's lock); Run, the one goroutine that talks to the holder,
// applies what they recorded.
type Keeper struct {
	path string
	log  zerolog.Logger
	kick chan struct{} // 1-buffered: something changed, Run applies it

	mu        sync.Mutex // guards want, gen, inherited, settled
	want      map[string]wanted
	gen       uint64
	inherited map[string]*os.File // from the holder at start, not yet taken
	settled   bool                // inherited sockets not taken by now are released

	connMu sync.Mutex    // guards hangup
	hangup chan struct{} // closed when the current connection's holder hangs up; nil: never connected

	conn *net.UnixConn     // from Load, handed to Run
	sent map[string]uint64 // with conn: what the holder has (generation 0: from a previous run)
}

type wanted struct {
	c   syscall.Conn
	gen uint64
}

// Load connects to the holder at path, waiting up to wait for its socket to
// appear (in a new pod both containers start together), and takes over the
// sockets it holds. A holder that does not answer is not an error: the
// keeper starts empty and Run keeps trying.
func Load(ctx context.Context, path string, wait time.Duration, log zerolog.Logger) *Keeper {
	k := &Keeper{
		path:      path,
		log:       log.With().Str("component", "fd-keeper").Logger(),
		kick:      make(chan struct{}, 1),
		want:      map[string]wanted{},
		inherited: map[string]*os.File{},
	}
	deadline := time.Now().Add(wait)
	for {
		conn, files, err := k.connect(ctx)
		if err == nil {
			k.conn, k.sent = conn, map[string]uint64{}
			k.watchHangup(conn)
			for key, f := range files {
				k.inherited[key] = f
				k.sent[key] = 0
			}
			k.log.Info().Str("socket", path).Int("sockets", len(files)).Msg("connected to the fd holder; took over the sockets it held")
			return k
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			k.log.Warn().Err(err).Str("socket", path).Msg("no fd holder yet; listening sockets are not kept across a restart until it answers")
			return k
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connect dials the holder and lists what it holds.
func (k *Keeper) connect(ctx context.Context) (*net.UnixConn, map[string]*os.File, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", k.path)
	if err != nil {
		return nil, nil, err
	}
	conn := c.(*net.UnixConn)
	files, err := list(conn)
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return conn, files, nil
}

// list asks for every held socket.
func list(c *net.UnixConn) (map[string]*os.File, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if err := send(c, verbList, "", -1); err != nil {
		return nil, err
	}
	out := map[string]*os.File{}
	for {
		verb, key, files, err := recv(c)
		if err != nil {
			for _, f := range out {
				_ = f.Close()
			}
			return nil, fmt.Errorf("fdhold: LIST: %w", err)
		}
		switch {
		case verb == verbEnd:
			closeAll(files)
			return out, nil
		case verb == verbFD && len(files) == 1:
			if old := out[key]; old != nil {
				_ = old.Close()
			}
			out[key] = files[0]
		default:
			closeAll(files)
		}
	}
}

// Take returns the socket a previous run left under key, or nil; the
// caller owns it.
func (k *Keeper) Take(key string) *os.File {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := k.inherited[key]
	delete(k.inherited, key)
	return f
}

// Keep records that c (a listener) is open under key: the holder gets a
// copy.
func (k *Keeper) Keep(key string, c syscall.Conn) {
	k.mu.Lock()
	k.gen++
	k.want[key] = wanted{c: c, gen: k.gen}
	k.mu.Unlock()
	k.poke()
}

// Drop records that the listener under key closed for good: the holder
// closes its copy.
func (k *Keeper) Drop(key string) {
	k.mu.Lock()
	delete(k.want, key)
	k.mu.Unlock()
	k.poke()
}

// Settle is called after a full sync: inherited sockets no Service took are
// closed here and released by the holder.
func (k *Keeper) Settle() {
	k.mu.Lock()
	if k.settled {
		k.mu.Unlock()
		return
	}
	k.settled = true
	left := k.inherited
	k.inherited = nil
	k.mu.Unlock()
	for key, f := range left {
		_ = f.Close()
		k.log.Info().Str("key", key).Msg("a previous run's socket no Service needs: released")
	}
	k.poke()
}

// HolderStays reports whether the holder is connected and does not hang up
// within wait: when the pod is deleted it gets SIGTERM with uproxy and hangs
// up at once; when only uproxy's container restarts it stays.
func (k *Keeper) HolderStays(wait time.Duration) bool {
	ch := k.currentHangup()
	if ch == nil {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ch:
		return false
	case <-t.C:
		return true
	}
}

func (k *Keeper) poke() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// Run applies the recorded changes to the holder until ctx ends (then once
// more), reconnecting when the holder goes away. It owns the connection.
func (k *Keeper) Run(ctx context.Context) error {
	conn, sent := k.conn, k.sent
	k.conn, k.sent = nil, nil
	lost := k.currentHangup() // nil (never ready) while not connected
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	down := false // logged once per outage
	for {
		if conn == nil {
			c, files, err := k.connect(ctx)
			if err != nil {
				if !down && ctx.Err() == nil {
					k.log.Warn().Err(err).Msg("fd holder unreachable; retrying")
					down = true
				}
				if !sleep(ctx, reconnectEvery) {
					return nil
				}
				continue
			}
			conn, sent, down = c, map[string]uint64{}, false
			lost = k.watchHangup(conn)
			for key, f := range files { // a running uproxy has its own copies
				_ = f.Close()
				sent[key] = 0
			}
			k.log.Info().Int("held", len(sent)).Msg("connected to the fd holder")
		}
		if err := k.apply(conn, sent); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			k.log.Warn().Err(err).Msg("fd holder connection lost; reconnecting")
			_ = conn.Close()
			conn = nil
			continue
		}
		select {
		case <-ctx.Done():
			// What the owner recorded last (uproxy's shutdown drops
			// every socket) still goes out.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			if err := k.apply(conn, sent); err != nil {
				k.log.Warn().Err(err).Msg("last changes not sent to the fd holder")
			}
			return nil
		case <-k.kick:
		case <-lost:
			k.log.Warn().Msg("fd holder went away; reconnecting")
			_ = conn.Close()
			conn = nil
		}
	}
}

// currentHangup is the hang-up channel of the current connection, or nil.
func (k *Keeper) currentHangup() chan struct{} {
	k.connMu.Lock()
	defer k.connMu.Unlock()
	return k.hangup
}

// watchHangup reads conn, on which the holder never sends unasked, until
// the read fails: the holder has gone (or conn was closed).
func (k *Keeper) watchHangup(conn *net.UnixConn) chan struct{} {
	lost := make(chan struct{})
	k.connMu.Lock()
	k.hangup = lost
	k.connMu.Unlock()
	go func() {
		defer close(lost)
		var b [1]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				return
			}
		}
	}()
	return lost
}

// apply sends what differs between the recorded listeners and sent (and
// updates sent). Until Settle, sockets of a previous run are not deleted.
func (k *Keeper) apply(conn *net.UnixConn, sent map[string]uint64) error {
	k.mu.Lock()
	want := make(map[string]wanted, len(k.want))
	for key, w := range k.want {
		want[key] = w
	}
	settled := k.settled
	k.mu.Unlock()
	for key, w := range want {
		if g, ok := sent[key]; ok && g == w.gen {
			continue
		}
		err := sendConn(conn, verbPut, key, w.c)
		if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
			continue // closed since; its Drop follows
		}
		if err != nil {
			return err
		}
		sent[key] = w.gen
	}
	if !settled {
		return nil
	}
	for key := range sent {
		if _, ok := want[key]; ok {
			continue
		}
		if err := send(conn, verbDel, key, -1); err != nil {
			return err
		}
		delete(sent, key)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
