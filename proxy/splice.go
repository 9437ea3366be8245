package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bufSize is the size of a pooled copy buffer; a read that fills one marks a
// bulk flow, which then moves to splice(2).
const bufSize = 32 << 10

// maxReplay bounds the client bytes kept for an early-reset retry.
const maxReplay = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// errEarlyReset: the endpoint reset or closed right after connect and the
// connection could not be moved to another endpoint.
var errEarlyReset = errors.New("endpoint reset the connection right after connect")

// tcpRelay is one proxied TCP connection.
//
// Ownership: serveTCP owns the client connection from Accept until it either
// resets it (no endpoint, every try failed) or, with a dialed backend
// connection, hands both to the relay. From then on the relay owns both and
// run closes both once both directions have ended. Others only set deadlines
// (expire: the janitor for idle and half-closed connections, Shutdown when
// draining times out), which makes the copies return. During the early
// phase copyDown may replace the backend (early-reset retry); it closes the
// replaced connection itself.
//
// Copying: each direction copies through a pooled buffer that is taken only
// when data is readable (pooledReader), so an idle connection holds two
// sockets and no buffer or pipe; the first read that fills a whole buffer
// marks a bulk flow, which continues with io.Copy between the two
// *net.TCPConn, i.e. splice(2) on Linux, until it ends. Bytes are summed per
// direction and added to the port's counters when the copy ends.
//
// Half-close: a direction that reads EOF calls CloseWrite on the other side
// and marks the relay half-closed; the janitor then bounds the remaining
// direction's idleness by Config.HalfCloseTimeout instead of TCPIdleTimeout.
type tcpRelay struct {
	p      *Proxier
	ps     *portState
	client *net.TCPConn
	caddr  netip.AddrPort

	mu        sync.Mutex   // guards the fields up to clientEOF
	backend   *net.TCPConn // replaced only before commit
	be        *backend
	replay    []byte       // client bytes sent before the endpoint answered
	overflow  bool         // replay outgrew maxReplay: no early retry possible
	committed bool         // the endpoint sent its first byte (or early handling is off)
	clientEOF bool         // the client half-closed; propagated with CloseWrite
	upBroken  *net.TCPConn // a backend a client write failed on before its answer

	tried       tried // endpoints tried; written by the dialing goroutine only
	connectedAt int64 // mono() of the current backend's connect; copyDown only
	halfClosed  atomic.Bool
	expired     atomic.Bool // idle/drain deadline hit: close normally, no RST
	up, down    int64       // bytes each way, each owned by its copy goroutine
}

// run relays until both directions end, then closes both connections; an
// error in either direction resets both (SO_LINGER 0).
func (r *tcpRelay) run() {
	upDone := make(chan error, 1)
	r.p.wg.Add(1)
	go r.proxyCopyUp(upDone)
	downErr := r.copyDown()
	if downErr != nil {
		r.expireNow()
	} else {
		r.halfClosed.Store(true)
	}
	upErr := <-upDone
	r.mu.Lock()
	bc, be := r.backend, r.be
	r.mu.Unlock()
	if (downErr != nil || upErr != nil) && !r.expired.Load() {
		_ = r.client.SetLinger(0)
		_ = bc.SetLinger(0)
	}
	// Close errors after a finished relay carry no information for anyone.
	_ = r.client.Close()
	_ = bc.Close()
	be.active.Add(-1)
	r.ps.stats.bytesUp.Add(uint64(r.up))
	r.ps.stats.bytesDown.Add(uint64(r.down))
	if downErr != nil || upErr != nil {
		r.ps.log.Debug().Str("client", r.caddr.String()).Str("endpoint", be.addr.String()).
			AnErr("down", downErr).AnErr("up", upErr).Msg("connection ended with error")
	}
}

// proxyCopyUp copies client → endpoint and reports how it ended.
func (r *tcpRelay) proxyCopyUp(done chan<- error) {
	defer r.p.wg.Done()
	err := r.copyUp()
	if err != nil {
		r.expireNow()
	} else {
		r.halfClosed.Store(true)
	}
	done <- err
}

// expireNow makes both copies return at once (the relay then closes).
func (r *tcpRelay) expireNow() {
	now := time.Now()
	_ = r.client.SetDeadline(now)
	r.mu.Lock()
	_ = r.backend.SetDeadline(now)
	r.mu.Unlock()
}

// expire ends an idle or drained relay: both copies return, both sides are
// closed normally.
func (r *tcpRelay) expire() {
	r.expired.Store(true)
	r.expireNow()
}

func (r *tcpRelay) copyUp() error {
	rc, err := r.client.SyscallConn()
	if err != nil {
		return err
	}
	pr := newPooledReader(rc)
	for {
		r.mu.Lock()
		early := !r.committed && !r.overflow
		r.mu.Unlock()
		if !early {
			break
		}
		b, n, err := pr.read()
		if err != nil {
			if err == io.EOF {
				r.mu.Lock()
				r.clientEOF = true
				bc := r.backend
				r.mu.Unlock()
				if err := bc.CloseWrite(); err != nil && !r.replaced(bc) && !r.brokenBeforeAnswer(bc) {
					return err
				}
				return nil // a replacement backend gets CloseWrite from retryEarly
			}
			return err
		}
		r.mu.Lock()
		if !r.committed && !r.overflow {
			if len(r.replay)+n <= maxReplay {
				r.replay = append(r.replay, (*b)[:n]...)
			} else {
				r.overflow, r.replay = true, nil
			}
		}
		bc := r.backend
		r.mu.Unlock()
		r.up += int64(n)
		_, werr := bc.Write((*b)[:n])
		bufPool.Put(b)
		// A failed write before the endpoint answered is left to copyDown,
		// which sees the same failure on its read and moves the connection
		// (the bytes are in the replay buffer) or ends the relay.
		if werr != nil && !r.replaced(bc) && !r.brokenBeforeAnswer(bc) {
			return werr
		}
	}
	r.mu.Lock()
	bc := r.backend
	r.mu.Unlock()
	n, err := pump(bc, r.client, pr)
	r.up += n
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.clientEOF = true
	r.mu.Unlock()
	return bc.CloseWrite()
}

// replaced reports whether bc is no longer the relay's backend (its bytes were
// replayed to the new one).
func (r *tcpRelay) replaced(bc *net.TCPConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.backend != bc
}

// brokenBeforeAnswer records that a write to bc failed before the endpoint's
// first byte. It reports whether copyDown will handle it: every client byte
// is in the replay buffer. (The write may have consumed the socket's
// ECONNRESET, so copyDown's read sees a plain EOF; earlyFailure knows.)
func (r *tcpRelay) brokenBeforeAnswer(bc *net.TCPConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.committed || r.overflow || r.p.cfg.DisableEjection {
		return false
	}
	r.upBroken = bc
	return true
}

func (r *tcpRelay) copyDown() error {
	var (
		pr   *pooledReader // reads prConn; made again when the backend is replaced
		prOf *net.TCPConn
	)
	readerOf := func(bc *net.TCPConn) (*pooledReader, error) {
		if prOf != bc {
			rc, err := bc.SyscallConn()
			if err != nil {
				return nil, err
			}
			pr, prOf = newPooledReader(rc), bc
		}
		return pr, nil
	}
	for {
		r.mu.Lock()
		committed, bc, be := r.committed, r.backend, r.be
		r.mu.Unlock()
		if committed {
			break
		}
		pr, err := readerOf(bc)
		if err != nil {
			return err
		}
		b, n, err := pr.read()
		if err != nil {
			if r.earlyFailure(bc, err) {
				if r.retryEarly(bc, err) {
					continue
				}
				return errEarlyReset
			}
			r.resetBeforeAnswer(be, bc, err)
			r.commit()
			if err == io.EOF {
				return r.client.CloseWrite()
			}
			return err
		}
		if h := &be.health; h.resetsInRow.Load() != 0 {
			h.resetsInRow.Store(0) // it answers
		}
		r.commit()
		r.down += int64(n)
		_, werr := r.client.Write((*b)[:n])
		bufPool.Put(b)
		if werr != nil {
			return werr
		}
	}
	r.mu.Lock()
	bc := r.backend
	r.mu.Unlock()
	pr, err := readerOf(bc)
	if err != nil {
		return err
	}
	n, err := pump(r.client, bc, pr)
	r.down += n
	if err != nil {
		return err
	}
	return r.client.CloseWrite()
}

func (r *tcpRelay) commit() {
	r.mu.Lock()
	r.committed, r.replay = true, nil
	r.mu.Unlock()
}

// earlyFailure reports whether a read error on bc before the endpoint's
// first byte is a connect-level failure of the endpoint: within
// EarlyResetWindow of the connect, a reset (or an EOF while the client had
// not half-closed, or after a client write to bc failed) before a single
// byte of the client's had left this host for the endpoint (nothingSent).
// Only such a failure ejects the endpoint and moves the connection: the
// endpoint cannot have read any of the request, so the replay cannot make
// it run twice (HAProxy's retry-on conn-failure; Envoy's connect-failure,
// not its reset). A reset or close after bytes went out may be the
// endpoint's answer by design, or come after it did the work: it reaches
// the client as it is and the endpoint stays in.
//
// Not "nothing acknowledged" (tcpi_bytes_acked): on loopback and veth the
// endpoint's ACK and its reset are queued per CPU and can arrive in either
// order, so a request the endpoint had read looked unacknowledged; a unit
// run on the loaded machine replayed one (TestEarlyResetReplayRule).
func (r *tcpRelay) earlyFailure(bc *net.TCPConn, err error) bool {
	if r.p.cfg.DisableEjection || mono()-r.connectedAt > int64(r.p.cfg.EarlyResetWindow) {
		return false
	}
	switch {
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
	case err == io.EOF:
		r.mu.Lock()
		failed := !r.clientEOF || r.upBroken == bc
		r.mu.Unlock()
		if !failed {
			return false
		}
	default:
		return false
	}
	return nothingSent(bc)
}

// resetBeforeAnswer handles a read error on bc, before the endpoint's first
// byte, that earlyFailure did not take: the client's bytes had reached the
// endpoint, so the reset is passed to the client (a replay could run the
// request twice). But an endpoint that resets Config.EjectAfterResets
// connections in a row that way, with no answer in between, is ejected: one
// that accepts and resets everything would otherwise fail a share of the
// requests for as long as it stays Ready, whenever the client's bytes win
// the race against its reset (Envoy counts such resets as gateway failures
// for its consecutive-failure ejection). A close (EOF) is not counted unless
// a client write found the connection reset: some servers close without
// answering by design.
func (r *tcpRelay) resetBeforeAnswer(be *backend, bc *net.TCPConn, err error) {
	switch {
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
	case err == io.EOF:
		r.mu.Lock()
		broken := r.upBroken == bc
		r.mu.Unlock()
		if !broken {
			return
		}
	default:
		return
	}
	r.ps.stats.resetsCut.Add(1)
	limit := r.p.cfg.EjectAfterResets
	if limit <= 0 || r.p.cfg.DisableEjection {
		return
	}
	if n := be.health.resetsInRow.Add(1); n >= int32(limit) {
		r.p.endpointFailed(r.ps, be, false, fmt.Sprintf("reset %d connections in a row before answering", n), err)
	}
}

// nothingSent reports whether no data byte has left this host on c:
// TCP_INFO tcpi_bytes_sent (data only, retransmissions included; 0 on a
// fresh connection, kept after a reset). Bytes written into the socket but
// not yet transmitted do not count: the endpoint cannot have them, and once
// the reset arrived the socket sends nothing more. Unknown counts as sent:
// no replay when in doubt.
func nothingSent(c *net.TCPConn) bool {
	info, ok := tcpInfo(c)
	return ok && info.Bytes_sent == 0
}

// retryEarly ejects the endpoint that failed right after connect (see
// earlyFailure) and moves the connection to another one, replaying what the
// client sent so far (none of which reached the failed endpoint). It
// reports false when that is impossible (replay off, replay overflow, tries
// exhausted, no other endpoint answering).
func (r *tcpRelay) retryEarly(old *net.TCPConn, cause error) bool {
	r.mu.Lock()
	oldBe := r.be
	r.mu.Unlock()
	r.ps.stats.earlyResets.Add(1)
	r.p.endpointFailed(r.ps, oldBe, false, "reset after connect", cause)
	r.ps.bal.forget(r.caddr.Addr())
	r.mu.Lock()
	can := !r.p.cfg.NoEarlyResetReplay && !r.overflow && r.tried.n < len(r.p.cfg.RetryTimeouts)
	r.mu.Unlock()
	if !can {
		return false
	}
	nc, nbe, err := r.p.dialBackend(r.p.ctx, r.ps, r.caddr.Addr(), &r.tried)
	if err != nil {
		return false
	}
	r.mu.Lock()
	if r.overflow {
		r.mu.Unlock()
		_ = nc.Close() // never used
		return false
	}
	_, werr := nc.Write(r.replay)
	if werr == nil && r.clientEOF {
		werr = nc.CloseWrite()
	}
	r.backend, r.be = nc, nbe
	r.mu.Unlock()
	r.connectedAt = mono()
	oldBe.active.Add(-1)
	nbe.active.Add(1)
	nbe.total.Add(1)
	_ = old.Close() // the failed endpoint's connection; nothing more to say to it
	r.ps.stats.replays.Add(1)
	return werr == nil
}

// pump copies src to dst until EOF (nil) or an error: small reads through
// pooled buffers, then, once a read fills a whole buffer, io.Copy (splice).
func pump(dst, src *net.TCPConn, pr *pooledReader) (int64, error) {
	var total int64
	for {
		b, n, err := pr.read()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		_, werr := dst.Write((*b)[:n])
		bufPool.Put(b)
		total += int64(n)
		if werr != nil {
			return total, werr
		}
		if n == bufSize {
			m, err := io.Copy(dst, src) // *net.TCPConn.ReadFrom: splice(2)
			return total + m, err
		}
	}
}

// pooledReader reads one connection through pooled buffers. Its callback
// is bound once (pr.fn), so a read allocates nothing: a closure passed to
// RawConn.Read escapes, and one per read cost several allocations per
// request. Only the copy goroutine that owns the direction uses it.
type pooledReader struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // pr.readFD, bound once
	b    *[]byte
	n    int
	rerr error
}

func newPooledReader(rc syscall.RawConn) *pooledReader {
	pr := &pooledReader{rc: rc}
	pr.fn = pr.readFD
	return pr
}

// readFD is the RawConn.Read callback: it takes a buffer only when the read
// returns data (or EOF, or a hard error).
func (pr *pooledReader) readFD(fd uintptr) bool {
	pr.b = bufPool.Get().(*[]byte)
	pr.n, pr.rerr = unix.Read(int(fd), *pr.b)
	if pr.rerr == unix.EAGAIN || pr.rerr == unix.EINTR {
		bufPool.Put(pr.b)
		pr.b = nil
		return false
	}
	return true
}

// read waits (in the netpoller, honouring deadlines) until the connection
// is readable and only then takes a pooled buffer and reads into it. The
// caller returns the buffer with bufPool.Put. EOF is io.EOF.
func (pr *pooledReader) read() (*[]byte, int, error) {
	pr.b, pr.n, pr.rerr = nil, 0, nil
	if err := pr.rc.Read(pr.fn); err != nil {
		if pr.b != nil {
			bufPool.Put(pr.b)
		}
		return nil, 0, err
	}
	b, n, rerr := pr.b, pr.n, pr.rerr
	pr.b = nil
	if rerr != nil || n <= 0 {
		bufPool.Put(b)
		if rerr != nil {
			return nil, 0, os.NewSyscallError("read", rerr)
		}
		return nil, 0, io.EOF
	}
	return b, n, nil
}
