//go:build !linux

package iptables

import "errors"

// inNetNS: network namespaces exist on Linux only.
func inNetNS(name string, fn func() error) error {
	if name != "" {
		return errors.New("netns: network namespaces need Linux")
	}
	return fn()
}
