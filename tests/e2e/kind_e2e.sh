#!/usr/bin/env bash
# `make e2e-kind`: the cluster user's path (docs/cluster.md) on a kind cluster, with real images.
#
# Needs Docker, kind, and network access for the image builds (python base image, PyPI). kubectl
# and helm come from PATH, else from the test bed's binaries (make testbin). NOT run in this
# project's CI: its machines have no Docker. The assertions are the ones the test-bed test runs
# (tests/integration/user_path.py), so CI covers the same path with simulated task pods.
#
# What it does: creates a kind cluster (one node, a host folder mounted at /data), builds the
# operator and worker images and loads them into the node, advertises fake nvidia.com/gpu
# capacity and a GPU model label on the node, then runs tests/e2e/test_kind.py: install the chart,
# apply the example, wait, check outputs and per-GPU stats, re-run to see skipping, uninstall.
#
# Environment:
#   GPUBATCH_KIND_CLUSTER  cluster name (default gpubatch-e2e); reused if it exists
#   GPUBATCH_E2E_DIR       work folder (default .e2e/ in the repository; holds data/ and kubeconfig)
#   GPUBATCH_E2E_KEEP=1    keep the cluster afterwards (default: delete it)
#   GPUBATCH_E2E_GPUS      fake GPUs advertised on the node (default 4)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${GPUBATCH_KIND_CLUSTER:-gpubatch-e2e}
work=${GPUBATCH_E2E_DIR:-$repo/.e2e}
gpus=${GPUBATCH_E2E_GPUS:-4}
python=${PYTHON:-$repo/.venv/bin/python}
tag=e2e
gpu_model=kind-fake-gpu

log() { printf '[e2e-kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed: the kind end-to-end test needs Docker"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"
command -v kind >/dev/null || die "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"

# kubectl and helm: PATH first, then the test bed's binaries; linked into one folder for the test.
mkdir -p "$work/bin" "$work/data"
testbin=$(bash "$repo/tests/testbed/testbin.sh" --print 2>/dev/null || true)
for tool in kubectl helm; do
  found=$(command -v "$tool" || true)
  [[ -z "$found" && -x "$testbin/$tool" ]] && found="$testbin/$tool"
  [[ -n "$found" ]] || die "$tool not found on PATH or in $testbin (make testbin builds it)"
  ln -sf "$found" "$work/bin/$tool"
done
kubectl() { "$work/bin/kubectl" --kubeconfig "$work/kubeconfig" "$@"; }

# Task pods (user 65532) write here; the operator reads it. Start from an empty folder.
rm -rf "$work/data" && mkdir -p "$work/data" && chmod 0777 "$work/data"

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
  kind get kubeconfig --name "$cluster" > "$work/kubeconfig"
else
  log "creating kind cluster $cluster"
  cat > "$work/kind-config.yaml" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  extraMounts:
  - hostPath: $work/data
    containerPath: /data
KIND
  kind create cluster --name "$cluster" --config "$work/kind-config.yaml" \
    --kubeconfig "$work/kubeconfig" --wait 180s
fi
cleanup() {
  if [[ "${GPUBATCH_E2E_KEEP:-0}" != 1 ]]; then
    log "deleting kind cluster $cluster (GPUBATCH_E2E_KEEP=1 keeps it)"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "building images (operator/Dockerfile, worker-image/Dockerfile)"
docker build -f "$repo/operator/Dockerfile" -t "gpubatch-operator:$tag" "$repo"
docker build -f "$repo/worker-image/Dockerfile" -t "gpubatch-worker:$tag" "$repo"
kind load docker-image --name "$cluster" "gpubatch-operator:$tag" "gpubatch-worker:$tag"

# A GPU node as far as the scheduler and gpubatch can tell: nvidia.com/gpu capacity (a node
# status patch, as for any extended resource without a device plugin) and a GPU model label.
# Nothing uses a GPU: the example's task runs on the CPU (worker.requireGPU: false).
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
log "advertising $gpus fake nvidia.com/gpu on node $node"
kubectl label node "$node" "nvidia.com/gpu.product=$gpu_model" --overwrite
kubectl patch node "$node" --subresource=status --type=merge \
  -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"$gpus\"},\"allocatable\":{\"nvidia.com/gpu\":\"$gpus\"}}}"
for _ in $(seq 60); do
  [[ "$(kubectl get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$gpus" ]] && break
  sleep 1
done
[[ "$(kubectl get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$gpus" ]] \
  || die "node $node does not show nvidia.com/gpu=$gpus as allocatable"

log "running tests/e2e/test_kind.py"
GPUBATCH_E2E_KUBECONFIG="$work/kubeconfig" \
GPUBATCH_E2E_BIN="$work/bin" \
GPUBATCH_E2E_DATA="$work/data" \
GPUBATCH_E2E_TAG="$tag" \
GPUBATCH_E2E_GPU_MODEL="$gpu_model" \
  "$python" -m pytest "$repo/tests/e2e/test_kind.py" -m e2e -v -p no:cacheprovider
