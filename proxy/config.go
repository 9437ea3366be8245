package proxy

import (
	"net/netip"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// PortalMode says how traffic reaches a service port's listener.
type PortalMode string

const (
	// ModeIPTables listens on BindAddr:proxyPort, with the proxy port from the
	// allocator; portal rules (svc.PortalSyncer) redirect the portal there.
	ModeIPTables PortalMode = "iptables"
	// ModeDirect listens on every portal IP:port itself (and BindAddr:NodePort
	// for node ports). A portal IP that is not local is logged once and skipped.
	ModeDirect PortalMode = "direct"
)

// Config is the data plane's configuration. The zero value of every field
// means its default (see the field comments).
type Config struct {
	BindAddr  netip.Addr // listen address in iptables mode; invalid or unspecified: all addresses
	PortRange PortRange  // proxy ports; empty: kernel-chosen
	Mode      PortalMode // default ModeIPTables

	// UDPIdleTimeout: a UDP session (and its reply path) lasts this long
	// after the last datagram in either direction; default 10s (see
	// DefaultUDPIdleTimeout).
	UDPIdleTimeout   time.Duration
	UDPMaxSessions   int           // UDP sessions per service port; default 4096
	TCPIdleTimeout   time.Duration // a TCP connection with no data either way is closed; default 1h
	HalfCloseTimeout time.Duration // a half-closed TCP connection idle this long is closed; default 60s

	DisableEjection bool // keep dial retries but never eject endpoints (to measure the feature)
	ReusePort       bool // SO_REUSEPORT on listeners (overlapping instances, restarts)
	// NoGracefulClose closes listeners at once at shutdown, resetting the
	// connections in their accept queues (to measure the graceful close).
	NoGracefulClose bool
	// NoUDPReplyDrain closes UDP listeners at once at shutdown, losing the
	// replies their sessions still await and, in a surge, the datagrams
	// queued in them (to measure the drain, udpdrain.go).
	NoUDPReplyDrain bool
	// NoTCPSteer keeps dropping new SYNs at a surge shutdown without
	// tcp_migrate_req instead of steering them to the other instance (to
	// measure the steering, tcpsteer_linux.go).
	NoTCPSteer bool
	// PreferredPorts are proxy ports a previous run used (read back from the
	// installed rules); they are tried first.
	PreferredPorts map[svc.PortName]uint16
	// Sockets, when set, keeps copies of the listening sockets outside the
	// process and hands back those a previous run left (SocketKeeper).
	Sockets SocketKeeper
	// HandoffDrain bounds the drain of established connections at a
	// shutdown that hands the listening sockets to the next run (see
	// Shutdown); default 2s.
	HandoffDrain time.Duration
	NodeName     string // this node, to mark local endpoints in Snapshot

	EjectBase time.Duration // first ejection; doubles per repeated ejection; default 1s
	EjectMax  time.Duration // ejection cap; default 30s
	// EarlyResetWindow: an endpoint that resets (or closes before sending a
	// byte while the client is still sending) within this time after connect
	// and before any byte of the client's was sent to it counts as failed
	// (ejected); the connection is retried on another endpoint when the
	// client's bytes so far fit the replay buffer. A reset after client
	// bytes went out is passed to the client: a replay could duplicate the
	// request. Default 100ms.
	EarlyResetWindow time.Duration
	// NoEarlyResetReplay keeps the connection on the endpoint that failed
	// right after connect: the client sees the reset (the endpoint is still
	// ejected). --early-reset-replay=false.
	NoEarlyResetReplay bool
	// EjectAfterResets: an endpoint that resets this many connections in a
	// row before its first byte, after the client's bytes had reached it,
	// is ejected (those requests are not replayed). Default 3; negative:
	// never (only connect-level failures eject).
	EjectAfterResets int
	ProbeTimeout     time.Duration // active TCP probe connect timeout; default 1s

	DialTimeoutFloor    time.Duration // adaptive first-try dial timeout bounds; default 50ms
	DialTimeoutCeiling  time.Duration // default 250ms
	DialTimeoutMultiple int           // timeout = multiple × recent connect p99; default 3
	// FDHeadroom is the number of fds kept free under RLIMIT_NOFILE when
	// admitting TCP connections (see fdBudget); 0: limit/200, clamped to
	// 32..256; negative: no admission control (EMFILE handling only).
	FDHeadroom int
	// RetryTimeouts is the legacy ladder; its length bounds the tries per
	// connection. Default 250ms, 500ms, 1s, 2s.
	RetryTimeouts []time.Duration
}

// Defaults used when a Config field is zero.
const (
	// DefaultUDPIdleTimeout is 10s, not legacy kube-proxy's 250ms, which
	// dropped any reply slower than that (a DNS query CoreDNS forwards to a
	// slow upstream; the client then waited for its resolver's retry, 5 s
	// with glibc). CoreDNS's forward plugin gives up on a query after 5 s,
	// so a reply comes within 5 s of the last query datagram; twice that
	// leaves room for our own scheduling delay. It stays below conntrack's
	// UDP timeouts (30 s unreplied, 120 s stream), so the NAT entry that
	// un-REDIRECTs replies outlives the session. Cost: a session holds
	// one fd and ~5 KiB (heap and goroutine stack, median of
	// BenchmarkUDPSessionFootprint) for 40× longer, so the same rate of new
	// client ports keeps 40× as many sessions open; the per-port cap
	// (UDPMaxSessions) bounds them: 4096 sessions ≈ 4096 fds and ~20 MiB,
	// reached at ~410 new client ports per second per service port, beyond
	// which datagrams of new clients are dropped and counted.
	DefaultUDPIdleTimeout   = 10 * time.Second
	DefaultUDPMaxSessions   = 4096
	DefaultTCPIdleTimeout   = time.Hour
	DefaultHalfCloseTimeout = 60 * time.Second
	DefaultEjectBase        = time.Second
	DefaultEjectMax         = 30 * time.Second
	DefaultEarlyResetWindow = 100 * time.Millisecond
	DefaultEjectAfterResets = 3
	DefaultProbeTimeout     = time.Second
	DefaultHandoffDrain     = 2 * time.Second
)

// DefaultRetryTimeouts is legacy kube-proxy's dial ladder.
var DefaultRetryTimeouts = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}

// maxTries bounds RetryTimeouts so that a connection's tried-endpoint list
// fits a fixed array on the stack.
const maxTries = 8

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Mode == "" {
		c.Mode = ModeIPTables
	}
	def(&c.UDPIdleTimeout, DefaultUDPIdleTimeout)
	def(&c.TCPIdleTimeout, DefaultTCPIdleTimeout)
	def(&c.HalfCloseTimeout, DefaultHalfCloseTimeout)
	def(&c.EjectBase, DefaultEjectBase)
	def(&c.EjectMax, DefaultEjectMax)
	def(&c.EarlyResetWindow, DefaultEarlyResetWindow)
	if c.EjectAfterResets == 0 {
		c.EjectAfterResets = DefaultEjectAfterResets
	}
	def(&c.ProbeTimeout, DefaultProbeTimeout)
	def(&c.HandoffDrain, DefaultHandoffDrain)
	def(&c.DialTimeoutFloor, 50*time.Millisecond)
	def(&c.DialTimeoutCeiling, 250*time.Millisecond)
	if c.UDPMaxSessions <= 0 {
		c.UDPMaxSessions = DefaultUDPMaxSessions
	}
	if c.DialTimeoutMultiple <= 0 {
		c.DialTimeoutMultiple = 3
	}
	if len(c.RetryTimeouts) == 0 {
		c.RetryTimeouts = DefaultRetryTimeouts
	}
	if len(c.RetryTimeouts) > maxTries {
		c.RetryTimeouts = c.RetryTimeouts[:maxTries]
	}
	if c.DialTimeoutCeiling < c.DialTimeoutFloor {
		c.DialTimeoutCeiling = c.DialTimeoutFloor
	}
	return c
}
