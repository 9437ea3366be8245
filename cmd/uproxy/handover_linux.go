package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/iptables"
	"github.com/uproxy/uproxy/proxy"
)

// testDisableEnv names parts of the restart handover to switch off, comma
// separated, so that the bed tests can show what each one is for:
// port-wait (UPROXY-PORT-WAIT stays empty), graceful-close (listeners close
// at once at shutdown), migrate-req (tcp_migrate_req is left alone),
// rule-owner (every instance writes portal rules), udp-reply-drain (UDP
// listeners close at once at shutdown, losing the replies still awaited),
// tcp-steer (at a surge shutdown without tcp_migrate_req, new SYNs are
// dropped rather than steered to the other instance).
// Not a flag: nobody should run with them off.
const testDisableEnv = "UPROXY_TEST_DISABLE"

// ownerSocket is the abstract unix socket (in the node's network namespace,
// which DaemonSet pods with hostNetwork share) on which the instance that
// writes the portal rules listens.
const ownerSocket = "@uproxy/portal-rules"

func handoverDisabled(part string) bool {
	return slices.Contains(strings.Split(os.Getenv(testDisableEnv), ","), part)
}

// setupHandover configures what makes a restart or a surge rollout refuse
// no connection (README "Restarts and upgrades"), in iptables mode:
//
//   - UPROXY-PORT-WAIT drops SYNs to proxy ports nothing listens on (the
//     client retransmits a second later) instead of resetting them; it
//     covers the proxy port range, or the kernel's ephemeral range when the
//     kernel chooses proxy ports;
//   - net.ipv4.tcp_migrate_req=1 in the node's network namespace, so a
//     listener closed while a surging instance shares its port hands its
//     accept queue over instead of resetting it;
//   - the proxier's graceful listener close (on unless switched off);
//   - one writer of the portal rules while two instances overlap: the
//     newest (iptables.Programmer.TakeOwnership on ownerSocket).
func setupHandover(opts *options, icfg *iptables.Config, pcfg *proxy.Config, log zerolog.Logger) {
	pcfg.NoGracefulClose = handoverDisabled("graceful-close")
	pcfg.NoUDPReplyDrain = handoverDisabled("udp-reply-drain")
	pcfg.NoTCPSteer = handoverDisabled("tcp-steer")
	if !handoverDisabled("rule-owner") {
		icfg.OwnerSocket = ownerSocket
	}
	if !handoverDisabled("port-wait") {
		span, err := waitPorts(opts.ProxyPortRange)
		if err != nil {
			log.Warn().Err(err).Msg("no proxy port range for UPROXY-PORT-WAIT: connections arriving while uproxy restarts will be reset")
		}
		icfg.WaitPorts = span
	}
	if handoverDisabled("migrate-req") {
		log.Warn().Str(testDisableEnv, os.Getenv(testDisableEnv)).Msg("restart handover partly switched off (tests only)")
		return
	}
	const sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
	if b, err := os.ReadFile(sysctl); err == nil && strings.TrimSpace(string(b)) == "1" {
		return
	}
	if err := os.WriteFile(sysctl, []byte("1"), 0o644); err != nil {
		log.Warn().Err(err).Msg("cannot set net.ipv4.tcp_migrate_req=1: connections queued on a stopping instance are reset during a surge rollout")
		return
	}
	log.Info().Msg("set net.ipv4.tcp_migrate_req=1 (this network namespace): a stopping instance hands its queued connections to the next one")
}

// waitPorts is the range proxy ports come from: the --proxy-port-range, or
// the kernel's ephemeral range (ip_local_port_range) when it is empty.
func waitPorts(r proxy.PortRange) (iptables.PortSpan, error) {
	if !r.Empty() {
		return iptables.PortSpan{First: uint16(r.Base), Last: uint16(r.Base + r.Size - 1)}, nil
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return iptables.PortSpan{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return iptables.PortSpan{}, fmt.Errorf("ip_local_port_range: %q", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || hi < lo {
		return iptables.PortSpan{}, fmt.Errorf("ip_local_port_range: %q", b)
	}
	return iptables.PortSpan{First: uint16(lo), Last: uint16(hi)}, nil
}
