#!/usr/bin/env bash
# Build (once) the real Kubernetes control-plane binaries the test bed runs, from Go modules.
#
# Why this exists: these machines have no Docker and no release downloads, so kind/envtest cannot
# work; every component is built from source through the Go module proxy instead. Builds are slow
# (tens of minutes on 2 cores), so the result is cached per user, keyed by the pinned versions in
# versions.env, and a second run returns in well under a second.
#
# Usage: testbin.sh            build what is missing, print the binary folder on stdout (last line)
#        testbin.sh --print    print the folder that would be used, build nothing
# Progress goes to stderr. Honours:
#   GPUBATCH_TESTBIN   a folder that already holds every binary: used as is, nothing is built
#   KUBEBUILDER_ASSETS the same, for people who have envtest assets plus kwok and helm
#   GPUBATCH_CACHE     cache root (default: ${XDG_CACHE_HOME:-~/.cache}/gpubatch)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

BINARIES=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl kubelet kwok helm)

log() { printf '[testbin %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

has_all() {
  local dir=$1 b
  for b in "${BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

for preset in "${GPUBATCH_TESTBIN:-}" "${KUBEBUILDER_ASSETS:-}"; do
  if [[ -n "$preset" ]] && has_all "$preset"; then
    log "using preset binaries in $preset"
    echo "$preset"
    exit 0
  fi
done

cache_root=${GPUBATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpubatch}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
dest="$cache_root/testbin/$key"

if [[ "${1:-}" == "--print" ]]; then echo "$dest"; exit 0; fi
if has_all "$dest"; then echo "$dest"; exit 0; fi

mkdir -p "$dest"
work="$cache_root/testbin-src/$key"
mkdir -p "$work"

# --- Go toolchain ------------------------------------------------------------------------------
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

ensure_go() {
  local have=""
  if command -v go >/dev/null 2>&1; then
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  fi
  if [[ -n "$have" ]] && version_ge "$have" "$GO_MIN_VERSION"; then
    GO=$(command -v go)
    return
  fi
  # No Go, or too old: fetch the official toolchain from the module proxy (the same artefact
  # GOTOOLCHAIN=auto would fetch), which needs only curl and unzip.
  local arch
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  local tc="$cache_root/go-toolchain/go${GO_MIN_VERSION}"
  if [[ ! -x "$tc/bin/go" ]]; then
    for tool in curl unzip; do
      if ! command -v "$tool" >/dev/null 2>&1; then
        log "installing $tool (apt-get)"
        apt-get update -qq >&2 && apt-get install -y -qq "$tool" >&2
      fi
    done
    # The machine's own proxy setting: GOPROXY from the environment, else an older Go's
    # `go env`; the project names no module host of its own.
    local proxy=${GOPROXY:-}
    if [[ -z "$proxy" ]] && command -v go >/dev/null 2>&1; then proxy=$(go env GOPROXY); fi
    proxy=${proxy%%,*}
    if [[ -z "$proxy" || "$proxy" == direct || "$proxy" == off ]]; then
      log "no Go module proxy configured (set GOPROXY) and no Go >= ${GO_MIN_VERSION} installed"
      exit 1
    fi
    local url="$proxy/golang.org/toolchain/@v/v0.0.1-go${GO_MIN_VERSION}.linux-${arch}.zip"
    log "Go ${have:-missing} is older than ${GO_MIN_VERSION}; fetching toolchain from $url"
    rm -rf "$tc.tmp" && mkdir -p "$tc.tmp"
    curl -fsSL "$url" -o "$tc.tmp/go.zip"
    (cd "$tc.tmp" && unzip -q go.zip && rm go.zip)
    # The zip holds golang.org/toolchain@.../{bin,pkg,src}
    mv "$tc.tmp"/golang.org/toolchain@*/ "$tc"
    rm -rf "$tc.tmp"
    chmod +x "$tc/bin/"* "$tc/pkg/tool/"*/* 2>/dev/null || true
  fi
  GO="$tc/bin/go"
  export GOROOT="$tc"
}
ensure_go
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod"
log "using $("$GO" version)"

# --- helpers ------------------------------------------------------------------------------------
build_one() {  # build_one <name> <module dir> <package> [ldflags]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
  if [[ -x "$dest/$name" ]]; then log "$name: cached"; return; fi
  log "$name: building $pkg (this is the slow part)"
  local start=$SECONDS
  (cd "$dir" && "$GO" build -trimpath -ldflags "-s -w $ldflags" -o "$dest/$name.tmp" "$pkg")
  mv "$dest/$name.tmp" "$dest/$name"
  log "$name: built in $((SECONDS - start)) s"
}

new_module() {  # new_module <dir> <module path>
  local dir=$1 path=$2
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    (cd "$dir" && "$GO" mod init "$path" >/dev/null 2>&1)
  fi
}

# --- Kubernetes: apiserver, scheduler, controller-manager, kubectl ---------------------------------
# k8s.io/kubernetes replaces its staging modules with ./staging/... paths that the module zip lacks,
# so a plain `go install` fails. A tools module that requires k8s.io/kubernetes and replaces each
# staging module by its published v0.X.Y version builds fine.
build_kubernetes() {
  local dir="$work/kubernetes"
  new_module "$dir" gpubatch.io/testbin/kubernetes
  local kver=$KUBERNETES_VERSION staging_ver="v0.${KUBERNETES_VERSION#v1.}"
  if [[ ! -f "$dir/.replaced" ]]; then
    log "kubernetes: resolving $kver and its staging modules ($staging_ver)"
    local upstream_mod
    upstream_mod=$("$GO" mod download -json "k8s.io/kubernetes@$kver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    local mods
    mods=$(sed -n '/^replace (/,/^)/p' "$upstream_mod" | awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}')
    (
      cd "$dir"
      "$GO" mod edit -require="k8s.io/kubernetes@$kver"
      for m in $mods; do "$GO" mod edit -replace="$m=$m@$staging_ver"; done
    )
    touch "$dir/.replaced"
  fi
  local major=${kver#v}; major=${major%%.*}
  local minor=${kver#v*.}; minor=${minor%%.*}
  local ld="" pkgpath
  for pkgpath in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkgpath.gitVersion=$kver -X $pkgpath.gitMajor=$major -X $pkgpath.gitMinor=$minor"
    ld+=" -X $pkgpath.gitTreeState=clean -X $pkgpath.buildDate=1970-01-01T00:00:00Z"
  done
  local cmd
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    build_one "$cmd" "$dir" "k8s.io/kubernetes/cmd/$cmd" "$ld"
  done
}

# --- etcd: its own module, because its dependency versions clash with Kubernetes' ----------------
build_etcd() {
  local dir="$work/etcd"
  new_module "$dir" gpubatch.io/testbin/etcd
  (cd "$dir" && "$GO" mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  # etcd's own go.mod pins sibling modules with replace lines that are ignored for a dependency;
  # require the matching versions explicitly so the build uses one consistent etcd.
  local m
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
    (cd "$dir" && "$GO" mod edit -require="go.etcd.io/etcd/$m@$ETCD_VERSION")
  done
  build_one etcd "$dir" go.etcd.io/etcd/server/v3 \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
}

build_plain() {  # build_plain <name> <module@version> <package>
  local name=$1 modver=$2 pkg=$3
  local dir="$work/$name"
  new_module "$dir" "gpubatch.io/testbin/$name"
  (cd "$dir" && "$GO" mod edit -require="$modver")
  build_one "$name" "$dir" "$pkg" "${4:-}"
}

total_start=$SECONDS
missing=()
for b in "${BINARIES[@]}"; do [[ -x "$dest/$b" ]] || missing+=("$b"); done
log "building ${missing[*]} into $dest"
log "estimate for a cold build of all eight: about 11 min on 2 idle cores, 20-40 min when other work shares them"
build_plain kwok "sigs.k8s.io/kwok@$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
build_plain helm "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_etcd
build_kubernetes

# kwok's stage and CRD YAMLs travel in its module zip; keep a copy next to the binaries for reference.
kwok_dir=$("$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
if [[ -d "$kwok_dir/kustomize" && ! -d "$dest/kwok-kustomize" ]]; then
  cp -r "$kwok_dir/kustomize" "$dest/kwok-kustomize" && chmod -R u+w "$dest/kwok-kustomize"
fi

has_all "$dest" || { log "some binaries are missing in $dest"; exit 1; }
log "all binaries ready in $dest ($((SECONDS - total_start)) s this run)"
echo "$dest"
