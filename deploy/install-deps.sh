#!/usr/bin/env bash
# Installs what building, running and testing shoal needs on Debian 12. Idempotent: packages
# already present are left alone and apt is not touched at all when nothing is missing.
set -euo pipefail

PACKAGES=(iproute2 util-linux nftables procps ca-certificates gcc libc6-dev runc crun busybox-static tini skopeo docker-registry python3 curl wrk iperf3 haproxy)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (rustup toolchain 1.88 or newer)" >&2
  exit 1
fi
