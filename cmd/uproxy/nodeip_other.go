//go:build !linux

package main

import "net/netip"

// defaultRouteIPs is Linux-only; elsewhere the node IPs come from the Node.
func defaultRouteIPs() []netip.Addr { return nil }
