//go:build !linux

package main

import (
	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/iptables"
	"github.com/uproxy/uproxy/proxy"
)

func setupHandover(*options, *iptables.Config, *proxy.Config, zerolog.Logger) {}
