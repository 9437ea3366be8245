#!/usr/bin/env bash
# Builds the upstream control plane used by the integration bed into
# integration/testbin/bin (gitignored): etcd v3.6.5, kube-apiserver and
# kube-controller-manager v1.36.3. Binaries already there are reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/bin"
mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# The machine's Go (1.26.8) is the release v1.36.3 is known to build with;
# the Makefile's GOTOOLCHAIN pin is for uproxy itself.
export GOTOOLCHAIN=local
if [ ! -x "$out/etcd" ]; then
  (cd "$here/etcd" && go build -trimpath -ldflags='-s -w' -o "$out/etcd.tmp" . && mv "$out/etcd.tmp" "$out/etcd")
fi
for c in kube-apiserver kube-controller-manager; do
  if [ ! -x "$out/$c" ]; then
    (cd "$here/kube" && go build -trimpath -ldflags='-s -w' -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c" && mv "$out/$c.tmp" "$out/$c")
  fi
done
ls -l "$out"
