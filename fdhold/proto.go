package fdhold

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Verbs of the protocol (doc.go).
const (
	verbPut  = "PUT"
	verbDel  = "DEL"
	verbList = "LIST"
	verbFD   = "FD"
	verbEnd  = "END"
)

// maxMsg bounds one message; keys are short listen addresses.
const maxMsg = 512

// oobSpace is room for one fd's SCM_RIGHTS message.
var oobSpace = unix.CmsgSpace(4)

// Key names a socket by protocol ("tcp", "udp") and listen address.
func Key(proto, addr string) string { return proto + " " + addr }

// send writes one message, with fd as SCM_RIGHTS when fd >= 0.
func send(c *net.UnixConn, verb, key string, fd int) error {
	msg := verb
	if key != "" {
		msg += " " + key
	}
	if len(msg) > maxMsg {
		return fmt.Errorf("fdhold: message too long (%d bytes)", len(msg))
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := c.WriteMsgUnix([]byte(msg), oob, nil); err != nil {
		return fmt.Errorf("fdhold: send %s: %w", verb, err)
	}
	return nil
}

// sendConn writes verb key with sc's socket attached. The socket is
// referenced for the duration of the write, so a concurrent close of sc
// cannot hand over a reused descriptor.
func sendConn(c *net.UnixConn, verb, key string, sc syscall.Conn) error {
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = send(c, verb, key, int(fd)) }); err != nil {
		return fmt.Errorf("fdhold: %s %s: %w", verb, key, err)
	}
	return serr
}

// recv reads one message: its verb, key and the descriptors that came with
// it, as files the caller owns.
func recv(c *net.UnixConn) (verb, key string, files []*os.File, err error) {
	buf := make([]byte, maxMsg)
	oob := make([]byte, oobSpace*4)
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", "", nil, err
	}
	if oobn > 0 {
		files, err = parseRights(oob[:oobn])
	}
	if err == nil && flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 {
		err = errors.New("fdhold: message truncated")
	}
	if n == 0 && err == nil {
		err = errors.New("fdhold: empty message")
	}
	if err != nil {
		closeAll(files)
		return "", "", nil, err
	}
	verb, key, _ = strings.Cut(string(buf[:n]), " ")
	return verb, key, files, nil
}

// parseRights turns SCM_RIGHTS messages into files.
func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("fdhold: control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "fdhold"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}
