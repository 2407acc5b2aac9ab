#!/usr/bin/env bash
# Install the Debian packages a real test-bed node needs (containerd, runc, CNI plugins) and
# the tools that build its images without Docker or a registry (buildah, debootstrap, gcc).
#
# Why a script: `make test` must work on a fresh machine of this kind, and the packages come
# through the machine's own apt configuration (its sources and proxy), never a named host.
# Idempotent and fast: when every package is installed it returns without touching apt.
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins debootstrap buildah gcc libc6-dev nftables)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  # Not root: this machine cannot run a real node anyway, and the realnode tests skip saying so.
  echo "[realnode-packages] not root: not installing ${missing[*]} (realnode tests will skip)" >&2
  exit 0
fi
echo "[realnode-packages] installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# --no-install-recommends: buildah recommends a container stack (podman's helpers, slirp, ...)
# that the node does not use.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# Debian starts containerd as a service on install; the test bed runs its own containerd with
# its own state folders, so a packaged one is stopped (where an init system runs it at all).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl stop containerd >&2 || true
  systemctl disable containerd >&2 || true
fi
