//go:build tools

// Package containerd pins containerd v2 (daemon, runc shim, ctr) for the
// integration bed's kubelet node. A nested module, so the main module never
// depends on it.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
