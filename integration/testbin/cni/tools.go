//go:build tools

// Package cni pins the CNI plugins the integration bed's kubelet node wires
// pods with: bridge, host-local, loopback and portmap.
package cni

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
