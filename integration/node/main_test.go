// Package node replays the seeds and the README's deployment guide on a real
// kubelet node (bed.SharedNode): kubelet, containerd and CNI run pods as
// containers from images the bed builds, kube-scheduler and CoreDNS do what
// they do in a cluster, and uproxy runs as the DaemonSet of deploy/, applied
// with kubectl. Each scenario prints one SUMMARY line with its figures.
package node

import (
	"os"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
