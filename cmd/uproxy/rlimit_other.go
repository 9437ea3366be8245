//go:build !linux

package main

import "github.com/rs/zerolog"

// raiseNofile is a no-op outside Linux; uproxy's portal rules need Linux anyway.
func raiseNofile(zerolog.Logger) uint64 { return 0 }
