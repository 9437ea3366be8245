//go:build !linux

package iptables

import (
	"context"
	"errors"
)

// netlinkConntrack: conntrack exists on Linux only.
type netlinkConntrack struct{ netns string }

func (netlinkConntrack) deleteUDP(context.Context, []ctFlow) (uint, error) {
	return 0, errors.New("conntrack: needs Linux")
}
