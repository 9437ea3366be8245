package fdhold

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"sync"

	"github.com/rs/zerolog"
)

// Holder keeps the sockets uproxy hands it until uproxy drops them or the
// holder stops. It never reads, accepts or writes on them.
type Holder struct {
	log zerolog.Logger

	mu   sync.Mutex // guards held
	held map[string]*os.File
}

// NewHolder returns an empty holder.
func NewHolder(log zerolog.Logger) *Holder {
	return &Holder{log: log.With().Str("component", "fd-holder").Logger(), held: map[string]*os.File{}}
}

// Listen opens the holder's socket at path (a stale socket file from a
// previous holder is replaced), for its owner and group only: in the
// DaemonSet both containers run with group 65532, and uproxy's root has no
// CAP_DAC_OVERRIDE.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers uproxy on ln until ctx ends, then closes ln and every
// socket held: the pod is going away, and uproxy, stopped at the same
// time, closes its sockets gracefully itself. Serve owns ln.
func (h *Holder) Serve(ctx context.Context, ln *net.UnixListener) error {
	var wg sync.WaitGroup
	defer func() {
		_ = ln.Close()
		wg.Wait()
		h.closeAll()
	}()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go h.serveConn(ctx, &wg, c)
	}
}

// serveConn handles one uproxy's requests until it disconnects; it owns c.
func (h *Holder) serveConn(ctx context.Context, wg *sync.WaitGroup, c *net.UnixConn) {
	defer wg.Done()
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	h.log.Info().Int("held", h.count()).Msg("uproxy connected")
	for {
		verb, key, files, err := recv(c)
		if err != nil {
			if ctx.Err() == nil {
				h.log.Info().Err(err).Int("held", h.count()).Msg("uproxy disconnected; holding its sockets")
			}
			return
		}
		switch verb {
		case verbPut:
			if len(files) != 1 || key == "" {
				h.log.Warn().Str("key", key).Int("fds", len(files)).Msg("PUT needs a key and one socket; ignored")
				closeAll(files)
				continue
			}
			h.put(key, files[0])
		case verbDel:
			closeAll(files)
			h.del(key)
		case verbList:
			closeAll(files)
			if err := h.list(c); err != nil {
				h.log.Warn().Err(err).Msg("LIST")
				return
			}
		default:
			closeAll(files)
			h.log.Warn().Str("verb", verb).Msg("unknown request; ignored")
		}
	}
}

func (h *Holder) put(key string, f *os.File) {
	h.mu.Lock()
	old := h.held[key]
	h.held[key] = f
	n := len(h.held)
	h.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	h.log.Debug().Str("key", key).Int("held", n).Msg("holding")
}

func (h *Holder) del(key string) {
	h.mu.Lock()
	f := h.held[key]
	delete(h.held, key)
	n := len(h.held)
	h.mu.Unlock()
	if f != nil {
		_ = f.Close()
	}
	h.log.Debug().Str("key", key).Int("held", n).Msg("released")
}

// list sends every held socket, then END. The writes happen outside the
// lock; a socket deleted meanwhile is skipped (its Control fails).
func (h *Holder) list(c *net.UnixConn) error {
	h.mu.Lock()
	keys := make([]string, 0, len(h.held))
	files := make(map[string]*os.File, len(h.held))
	for k, f := range h.held {
		keys = append(keys, k)
		files[k] = f
	}
	h.mu.Unlock()
	slices.Sort(keys)
	sent := 0
	for _, k := range keys {
		err := sendConn(c, verbFD, k, files[k])
		if errors.Is(err, os.ErrClosed) {
			continue
		}
		if err != nil {
			return err
		}
		sent++
	}
	h.log.Info().Int("sockets", sent).Msg("handed the held sockets to uproxy")
	return send(c, verbEnd, "", -1)
}

func (h *Holder) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

func (h *Holder) closeAll() {
	h.mu.Lock()
	held := h.held
	h.held = map[string]*os.File{}
	h.mu.Unlock()
	for _, f := range held {
		_ = f.Close()
	}
	if len(held) > 0 {
		h.log.Info().Int("sockets", len(held)).Msg("closed the held sockets")
	}
}
