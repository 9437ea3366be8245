package bed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Proc is a long-running process the bed started inside a namespace, with
// its output in a log file.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	logf    *os.File
	done    chan struct{} // closed when the process has been waited for
	waitErr error         // set before done is closed
}

// StartProc starts argv in ns with env added to the bed's environment and
// stdout+stderr appended to logPath.
func StartProc(ns *Netns, name, logPath string, env []string, argv ...string) (*Proc, error) {
	return startProc(ns, name, logPath, env, nil, argv...)
}

// readyWriter copies to the log and closes ready at the first write that
// contains the marker line.
type readyWriter struct {
	f      *os.File
	marker []byte
	ready  chan struct{}
	seen   bool // only the exec copy goroutine writes, so no lock
}

func (w *readyWriter) Write(b []byte) (int, error) {
	if !w.seen && bytes.Contains(b, w.marker) {
		w.seen = true
		close(w.ready)
	}
	return w.f.Write(b)
}

func startProc(ns *Netns, name, logPath string, env []string, rw *readyWriter, argv ...string) (*Proc, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if rw != nil {
		rw.f = f
		cmd.Stdout = rw
	}
	if err := ns.Start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, logf: f, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *Proc) wait() {
	p.waitErr = p.cmd.Wait()
	p.logf.Close()
	close(p.done)
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Signal sends sig unless the process has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns the exit
// error of the process (nil for exit status 0) and whether it had to be killed.
func (p *Proc) Stop(grace time.Duration) (error, bool) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr, false
	case <-time.After(grace):
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
	return p.waitErr, true
}

// Kill SIGKILLs the process and waits for it.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Tail returns the last n lines of the log.
func (p *Proc) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grepFile returns the lines of path containing any of the words.
func grepFile(path string, words ...string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var out []string
	for _, l := range bytes.Split(b, []byte("\n")) {
		for _, w := range words {
			if bytes.Contains(l, []byte(w)) {
				out = append(out, string(l))
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
