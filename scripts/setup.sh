#!/usr/bin/env bash
# Installs the Debian packages the tests and the bed use, only when missing.
set -euo pipefail
need=()
for pair in iptables:iptables ip6tables:iptables conntrack:conntrack curl:curl wrk:wrk dig:dnsutils \
            ip:iproute2 haproxy:haproxy dnsmasq:dnsmasq-base prlimit:util-linux nc:netcat-openbsd debootstrap:debootstrap \
            runc:runc; do
  bin=${pair%%:*} pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
# make bench also needs dnsperf (the UDP DNS measure).
if [ "${1:-}" = --bench ]; then
  command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${need[*]} and not root; install them first" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
