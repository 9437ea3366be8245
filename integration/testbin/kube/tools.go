//go:build tools

// Package kube pins the upstream control-plane binaries that the integration
// bed runs. It is a nested module so the main module never depends on
// k8s.io/kubernetes. Build with: go build -o DIR k8s.io/kubernetes/cmd/kube-apiserver ...
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
