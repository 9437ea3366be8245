//go:build tools

// Package kube pins the upstream Kubernetes binaries that the integration
// bed runs: the control plane (kube-apiserver, kube-controller-manager,
// kube-scheduler), the node (kubelet), kube-proxy for the side-by-side
// scenario and kubectl for the scenarios' own commands. It is a nested module
// so the main module never depends on k8s.io/kubernetes. Build with:
// go build -o DIR k8s.io/kubernetes/cmd/kube-apiserver ...
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
