package bed

import (
	"context"
	"fmt"
	"syscall"
)

// Crash SIGKILLs the pod's server without telling the API: the pod stays
// Running and Ready and its endpoint stays in the EndpointSlice, but
// connections are refused (the pod's address still answers with RST).
func (a *Agent) Crash(namespace, name string) error {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	p := w.proc
	w.crashed = true
	w.mu.Unlock()
	if p == nil {
		return fmt.Errorf("agent: %s has no server", w.key)
	}
	p.Kill()
	return nil
}

// Blackhole makes the pod drop every incoming TCP and UDP packet (an iptables
// DROP inside the pod's own namespace; ARP still answers), so SYNs vanish and
// dials time out. The API is not told.
func (a *Agent) Blackhole(namespace, name string) error {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ns == nil {
		return fmt.Errorf("agent: %s has no namespace", w.key)
	}
	if w.blackholed {
		return nil
	}
	if _, err := w.ns.Output(a.ctx, "iptables", "-w", "-I", "INPUT", "-j", "DROP"); err != nil {
		return err
	}
	w.blackholed = true
	return nil
}

// ResetConnections switches the pod's server into (on) or out of reset mode:
// it accepts TCP connections and closes them at once with RST, while the pod
// stays Ready in the API.
func (a *Agent) ResetConnections(namespace, name string, on bool) error {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil {
		return fmt.Errorf("agent: %s has no server", w.key)
	}
	if w.resetting == on {
		return nil
	}
	if err := w.proc.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	w.resetting = on
	return nil
}

// SetReady reports the pod Ready or not Ready in the API (a readiness probe
// flipping); the server keeps running either way.
func (a *Agent) SetReady(ctx context.Context, namespace, name string, ready bool) error {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.ready = ready
	w.mu.Unlock()
	return w.pushStatus(ctx)
}

// Restore undoes the faults: removes the blackhole, leaves reset mode,
// restarts a crashed server and reports the pod Ready again.
func (a *Agent) Restore(ctx context.Context, namespace, name string) error {
	w, err := a.worker(namespace, name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	ns, blackholed, crashed := w.ns, w.blackholed, w.crashed
	w.mu.Unlock()
	if blackholed && ns != nil {
		if _, err := ns.Output(ctx, "iptables", "-w", "-D", "INPUT", "-j", "DROP"); err != nil {
			return err
		}
		w.mu.Lock()
		w.blackholed = false
		w.mu.Unlock()
	}
	if crashed {
		if err := w.startServer(); err != nil {
			return err
		}
	} else if err := a.ResetConnections(namespace, name, false); err != nil {
		return err
	}
	return a.SetReady(ctx, namespace, name, true)
}
