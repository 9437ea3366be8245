# syntax=docker/dockerfile:1
#
# uproxy image: a static binary on debian-slim with the tools the iptables
# portal mode execs (iptables/ip6tables with -restore/-save, nft and legacy
# flavours) and conntrack for debugging.
#
#   docker build -t uproxy:dev --build-arg VERSION=$(git describe --tags --always --dirty) .
#   minikube image build -t uproxy:dev .      # or: minikube image load uproxy:dev
#
# Privileges (be aware of what is possible):
# - The image's default user is 65532 (non-root). That is enough for
#   `--portal-mode direct` on ports >= 1024 and for `--version`/`--help`.
# - `--portal-mode iptables` (the DaemonSet) execs iptables-restore and talks
#   netlink for conntrack: both need CAP_NET_ADMIN (and CAP_NET_RAW for
#   iptables-legacy). Kubernetes cannot give a non-root process ambient
#   capabilities, and an exec'd iptables-restore does not inherit file
#   capabilities of uproxy, so deploy/daemonset.yaml runs the container as
#   UID 0 with every capability dropped except NET_ADMIN and NET_RAW, no
#   privilege escalation and a read-only root filesystem.

# 1.27.3: the Go release whose standard library `make vulncheck` finds clean
# (go1.26.8 has 10 reachable stdlib advisories, fixed in 1.26.10).
ARG GO_VERSION=1.27.3

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# Only the packages the binary is built from (the integration bed and its
# control-plane binaries stay out of the build context transfer).
COPY svc/ svc/
COPY proxy/ proxy/
COPY watch/ watch/
COPY iptables/ iptables/
COPY cmd/ cmd/
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/uproxy/uproxy/cmd/uproxy/version.Version=${VERSION}" \
      -o /out/uproxy ./cmd/uproxy && \
    /out/uproxy --version

FROM debian:bookworm-slim
# The loop fails the build if a tool the iptables mode execs is missing.
RUN apt-get update && \
    apt-get install -y --no-install-recommends iptables conntrack ca-certificates && \
    rm -rf /var/lib/apt/lists/* && \
    for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save \
             iptables-nft-restore iptables-legacy-restore ip6tables-nft-restore ip6tables-legacy-restore conntrack; do \
      command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; \
    done
COPY --from=build /out/uproxy /usr/local/bin/uproxy
USER 65532:65532
EXPOSE 10256
ENTRYPOINT ["/usr/local/bin/uproxy"]
