package watch

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// The state checkpoint lets a restarted uproxy serve the last known Services
// and endpoints while the API server is unreachable (issue 14, goal 3).
//
// File format (JSON, one object):
//
//	{"version":1,"checksum":"sha256:<hex of state's bytes>","state":{
//	  "node":"node-1","written":"2026-...Z","nodeIPs":["10.0.0.1"],
//	  "ports":[{"port":<svc.Port>,"endpoints":[<svc.Endpoint>...]},...]}}
//
// state holds the service ports of the last SyncPorts and the endpoint sets
// last handed to UpdateEndpoints, as the proxy uses them (svc's value types,
// already filtered by node, families and internalTrafficPolicy). The checksum
// covers state's exact bytes, so a torn, truncated or hand-edited file is
// rejected.

// CheckpointVersion is the checkpoint file format version. Bump it when the
// meaning of a field of svc.Port or svc.Endpoint changes: a file of another
// version is ignored.
const CheckpointVersion = 1

// DefaultCheckpointPath is --checkpoint-path's default. Its directory must
// exist (the DaemonSet mounts it from the host); uproxy never creates it.
const DefaultCheckpointPath = "/var/lib/uproxy/state.json"

// checkpointInterval is the least time between two checkpoint writes: a
// change is written within this long, and a busy cluster causes at most one
// write per interval.
const checkpointInterval = time.Second

// Checkpoint is the state a previous run served.
type Checkpoint struct {
	Node string `json:"node"` // the node it was written on (Options.NodeName)
	// ServiceProxyName is the writer's Options.ServiceProxyName: it decides
	// which Services were proxied (beside kube-proxy or instead of it).
	ServiceProxyName string    `json:"serviceProxyName,omitempty"`
	Written          time.Time `json:"written"` // when it was written
	// NodeIPs are the Node object's addresses (NodeInfo.Addresses) when it
	// was written: start-up uses them when the Node is not known yet.
	NodeIPs []netip.Addr     `json:"nodeIPs,omitempty"`
	Ports   []CheckpointPort `json:"ports"`
}

// CheckpointPort is one service port and its endpoints.
type CheckpointPort struct {
	Port      svc.Port       `json:"port"`
	Endpoints []svc.Endpoint `json:"endpoints,omitempty"`
}

// checkpointFile is the envelope on disk.
type checkpointFile struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	State    json.RawMessage `json:"state"`
}

// ErrNoCheckpoint is returned (wrapped) by LoadCheckpoint when the file does
// not exist: a first start, not a problem.
var ErrNoCheckpoint = errors.New("no checkpoint")

// LoadCheckpoint reads the checkpoint at opts.CheckpointPath and validates
// it for opts (NodeName, ServiceProxyName). Any error means the file must be
// ignored; errors.Is(err, ErrNoCheckpoint) when there is none.
func LoadCheckpoint(opts Options) (*Checkpoint, error) {
	path := opts.CheckpointPath
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoCheckpoint, path)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	c, err := decodeCheckpoint(b, opts.NodeName, opts.ServiceProxyName)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	return c, nil
}

func checksum(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// encodeCheckpoint renders c as the file's bytes.
func encodeCheckpoint(c *Checkpoint) ([]byte, error) {
	state, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(checkpointFile{Version: CheckpointVersion, Checksum: checksum(state), State: state})
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// decodeCheckpoint parses and validates a file's bytes for node and
// proxyName (--service-proxy-name).
func decodeCheckpoint(b []byte, node, proxyName string) (*Checkpoint, error) {
	var f checkpointFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("not a checkpoint: %w", err)
	}
	if f.Version != CheckpointVersion {
		return nil, fmt.Errorf("format version %d, this uproxy reads %d", f.Version, CheckpointVersion)
	}
	if got := checksum(f.State); got != f.Checksum {
		return nil, fmt.Errorf("checksum mismatch (file says %q, state is %q)", f.Checksum, got)
	}
	var c Checkpoint
	if err := json.Unmarshal(f.State, &c); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if c.Node != node {
		return nil, fmt.Errorf("written on node %q, this is node %q", c.Node, node)
	}
	if c.ServiceProxyName != proxyName {
		return nil, fmt.Errorf("written for --service-proxy-name %q, this uproxy has %q", c.ServiceProxyName, proxyName)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// validate checks that every port and endpoint is one watch/ could have
// produced.
func (c *Checkpoint) validate() error {
	if c.Written.IsZero() {
		return errors.New("no write time")
	}
	for _, a := range c.NodeIPs {
		if !a.IsValid() {
			return errors.New("invalid node IP")
		}
	}
	seen := make(map[svc.PortName]bool, len(c.Ports))
	for i, cp := range c.Ports {
		p := cp.Port
		switch {
		case p.Name.Namespace == "" || p.Name.Name == "":
			return fmt.Errorf("port %d: no service name", i)
		case seen[p.Name]:
			return fmt.Errorf("port %s twice", p.Name)
		case p.Protocol != svc.TCP && p.Protocol != svc.UDP:
			return fmt.Errorf("port %s: protocol %q", p.Name, p.Protocol)
		case p.Port == 0:
			return fmt.Errorf("port %s: port 0", p.Name)
		case len(p.ClusterIPs) == 0:
			return fmt.Errorf("port %s: no cluster IP", p.Name)
		case p.Affinity.Timeout < 0:
			return fmt.Errorf("port %s: negative affinity timeout", p.Name)
		}
		seen[p.Name] = true
		for _, a := range p.PortalAddrs() {
			if !a.IsValid() {
				return fmt.Errorf("port %s: invalid portal address", p.Name)
			}
			// One family per port: a checkpoint of a version that merged
			// the families of a dual-stack port must not bring the
			// merged state back.
			if svc.FamilyOf(a) != p.Name.Family {
				return fmt.Errorf("port %s: portal address %s not of family %s", p.Name, a, p.Name.Family)
			}
		}
		for _, e := range cp.Endpoints {
			if !e.Addr.IsValid() || e.Addr.Port() == 0 {
				return fmt.Errorf("port %s: invalid endpoint %q", p.Name, e.Addr)
			}
			if svc.FamilyOf(e.Addr.Addr()) != p.Name.Family {
				return fmt.Errorf("port %s: endpoint %s not of family %s", p.Name, e.Addr, p.Name.Family)
			}
			if !e.Ready && !(e.Serving && e.Terminating) {
				return fmt.Errorf("port %s: endpoint %s is neither ready nor serving-terminating", p.Name, e.Addr)
			}
		}
	}
	return nil
}

// portList returns the ports in file order.
func (c *Checkpoint) portList() []svc.Port {
	out := make([]svc.Port, len(c.Ports))
	for i, cp := range c.Ports {
		out[i] = cp.Port
	}
	return out
}

// endpoints returns the endpoint sets of the ports that have any.
func (c *Checkpoint) endpoints() map[svc.PortName][]svc.Endpoint {
	out := make(map[svc.PortName][]svc.Endpoint, len(c.Ports))
	for _, cp := range c.Ports {
		if len(cp.Endpoints) > 0 {
			out[cp.Port.Name] = cp.Endpoints
		}
	}
	return out
}

// writeFileAtomic replaces path with data so that a reader (or a crash at
// any point) sees either the old file or the new one, never a mix: a
// temporary file in the same directory, written and fsynced, renamed over
// path, then the directory fsynced so the rename survives a power cut.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
