// Package fdhold keeps uproxy's listening sockets open while uproxy itself
// restarts (a crash, an OOM kill, a liveness restart of its container).
//
// A holder process (`uproxy fd-holder`, a second container in the DaemonSet
// pod, see Holder) keeps a copy of every proxy port's socket. uproxy hands
// each socket over when it opens it (Keeper.Keep) through a unix socket in
// the pod's emptyDir, as SCM_RIGHTS ancillary data, the way HAProxy's `-x`
// and Envoy's hot restart pass listeners between processes. While no uproxy
// runs, the kernel keeps completing handshakes into the listeners' accept
// queues and queueing datagrams on the UDP sockets, instead of resetting or
// dropping them; the next uproxy takes the sockets back (Keeper.Take) and
// serves what queued meanwhile.
//
// What it does not do: it holds no established connection, so a connection
// uproxy was relaying when it died is cut (as with HAProxy or Envoy killed
// by SIGKILL), and a UDP reply on its way back to a client through the dead
// process is lost. The holder never reads or accepts on the sockets it holds.
//
// The protocol (SOCK_SEQPACKET, one message per request):
//
//	PUT <key>   + one fd   the holder keeps fd under key, replacing one it had
//	DEL <key>              the holder closes its copy
//	LIST                   the holder answers "FD <key>" + fd for each socket, then "END"
//
// A key is the socket's protocol and listen address, e.g. "tcp :30001".
package fdhold
