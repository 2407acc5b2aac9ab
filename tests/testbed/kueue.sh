#!/usr/bin/env bash
# Build (once) Kueue's manager and collect its CRDs, from the Go module at the pinned version.
#
# Why a sibling of testbin.sh rather than a ninth binary there: the control-plane cache key would
# change and every binary would rebuild (tens of minutes) just to add Kueue. Kueue gets its own
# cache folder keyed by its own version; the Kubernetes binaries are untouched.
#
# Usage: kueue.sh            build what is missing, print the folder on stdout (last line)
#        kueue.sh --print    print the folder that would be used, build nothing
# The folder holds `kueue` (the manager), `crds/` (config/components/crd/bases of the module) and
# `webhooks.yaml` (config/components/webhook/manifests.yaml: which paths serve which objects).
# Progress goes to stderr. Honours GPUBATCH_KUEUE (a folder that already holds both: used as is)
# and GPUBATCH_CACHE (cache root, default ${XDG_CACHE_HOME:-~/.cache}/gpubatch).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

log() { printf '[kueue %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
ready() { [[ -x "$1/kueue" && -f "$1/crds/kueue.x-k8s.io_clusterqueues.yaml" && -f "$1/webhooks.yaml" ]]; }

if [[ -n "${GPUBATCH_KUEUE:-}" ]] && ready "$GPUBATCH_KUEUE"; then echo "$GPUBATCH_KUEUE"; exit 0; fi

cache_root=${GPUBATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpubatch}
dest="$cache_root/testbin/kueue-${KUEUE_VERSION}"
if [[ "${1:-}" == "--print" ]]; then echo "$dest"; exit 0; fi
if ready "$dest"; then echo "$dest"; exit 0; fi

command -v go >/dev/null 2>&1 || { log "Go is needed (Kueue ${KUEUE_VERSION} needs Go >= 1.25)"; exit 1; }
# GOTOOLCHAIN is left as the caller set it: if the machine's Go is older than Kueue's go.mod,
# the go command itself says so (or fetches the toolchain through the machine's module proxy).
export GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod"
log "using $(go version)"

work="$cache_root/testbin-src/kueue-${KUEUE_VERSION}"
mkdir -p "$work" "$dest"
if [[ ! -f "$work/go.mod" ]]; then (cd "$work" && go mod init gpubatch.io/testbin/kueue >/dev/null 2>&1); fi
(cd "$work" && go mod edit -require="sigs.k8s.io/kueue@${KUEUE_VERSION}")

start=$SECONDS
if [[ ! -x "$dest/kueue" ]]; then
  log "building sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION} (cold: several minutes)"
  (cd "$work" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}" \
    -o "$dest/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue)
  mv "$dest/kueue.tmp" "$dest/kueue"
  log "kueue: built in $((SECONDS - start)) s"
fi
src=$(cd "$work" && go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
rm -rf "$dest/crds" && mkdir -p "$dest/crds"
cp "$src"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "$dest/crds/"
cp "$src/config/components/webhook/manifests.yaml" "$dest/webhooks.yaml"
chmod -R u+w "$dest/crds" "$dest/webhooks.yaml"
ready "$dest" || { log "kueue or its CRDs are missing in $dest"; exit 1; }
log "ready in $dest ($((SECONDS - start)) s this run)"
echo "$dest"
