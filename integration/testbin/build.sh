#!/usr/bin/env bash
# Builds the upstream binaries the integration bed runs into
# integration/testbin/bin (gitignored), each from a nested module of its own:
#   etcd/        etcd v3.6.5
#   kube/        kube-apiserver, kube-controller-manager, kube-scheduler,
#                kubelet, kube-proxy, kubectl v1.36.3
#   containerd/  containerd, containerd-shim-runc-v2, ctr v2.4.2
#   cni/         bridge, host-local, loopback, portmap v1.10.0
#   coredns/     coredns (cut to the plugins the bed's cluster DNS uses)
# A build is kept in a cache outside the checkout, keyed by the module's
# go.mod and go.sum (so by version), so that a fresh clone on the same machine
# (CI) copies the binaries instead of rebuilding them. UPROXY_TESTBIN_CACHE
# moves the cache; `build.sh control-plane` builds only what the namespace bed
# needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/bin"
cache="${UPROXY_TESTBIN_CACHE:-/var/cache/uproxy-testbin}"
mkdir -p "$out" "$cache"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# The machine's Go (1.26.8) is the release these are known to build with;
# the Makefile's GOTOOLCHAIN pin is for uproxy itself.
export GOTOOLCHAIN=local

# build MODULE "BIN=PKG ..." builds the packages of one nested module.
build() {
  local mod=$1; shift
  local key
  key=$(cat "$here/$mod/go.mod" "$here/$mod/go.sum" "$here/$mod"/*.go | sha256sum | cut -c1-16)
  local dir="$cache/$mod-$key"
  local pair bin pkg
  for pair in "$@"; do
    bin=${pair%%=*} pkg=${pair#*=}
    if [ -x "$out/$bin" ] && cmp -s "$out/$bin" "$dir/$bin"; then continue; fi
    if [ ! -x "$dir/$bin" ]; then
      echo "testbin: building $bin ($mod)" >&2
      local t0=$SECONDS
      mkdir -p "$dir"
      (cd "$here/$mod" && go build -trimpath -ldflags='-s -w' -o "$dir/$bin.tmp" "$pkg")
      mv "$dir/$bin.tmp" "$dir/$bin"
      echo "testbin: built $bin in $((SECONDS - t0)) s" >&2
    fi
    cp -f "$dir/$bin" "$out/$bin.tmp" && mv -f "$out/$bin.tmp" "$out/$bin"
  done
}

build etcd "etcd=."
build kube "kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver" \
  "kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager"
if [ "${1:-}" != control-plane ]; then
  build kube "kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler" \
    "kubelet=k8s.io/kubernetes/cmd/kubelet" \
    "kube-proxy=k8s.io/kubernetes/cmd/kube-proxy" \
    "kubectl=k8s.io/kubernetes/cmd/kubectl"
  build containerd "containerd=github.com/containerd/containerd/v2/cmd/containerd" \
    "containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2" \
    "ctr=github.com/containerd/containerd/v2/cmd/ctr"
  build cni "bridge=github.com/containernetworking/plugins/plugins/main/bridge" \
    "host-local=github.com/containernetworking/plugins/plugins/ipam/host-local" \
    "loopback=github.com/containernetworking/plugins/plugins/main/loopback" \
    "portmap=github.com/containernetworking/plugins/plugins/meta/portmap"
  build coredns "coredns=."
fi
ls -l "$out"
