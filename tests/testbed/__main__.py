"""`python -m testbed up|down|status` — the test bed for people (make testbed-up / testbed-down).

`up` leaves the processes running in the background and prints the `export KUBECONFIG=...` line;
`down` stops them and removes the folder. State lives in .testbed/ at the repository root
(or $GPUBATCH_TESTBED_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.controlplane import REPO, Testbed, TestbedConfig, env_with_kubeconfig
from testbed.kueue import Kueue, Queue
from testbed.leases import lease_flags, lease_url
from testbed.nodes import GpuNodePool
from testbed.processes import free_port
from testbed.realnode.node import REAL_NODE_TAINT


def state_dir() -> Path:
    return Path(os.environ.get("GPUBATCH_TESTBED_DIR", REPO / ".testbed")).resolve()


def parse_pools(specs: list[str]) -> list[GpuNodePool]:
    """NAME:COUNT:GPUS[:MODEL], e.g. fast:2:8:NVIDIA-H100-80GB-HBM3 slow:2:8:Tesla-T4."""
    pools = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise SystemExit(f"--pool {spec!r}: expected NAME:COUNT:GPUS[:MODEL]")
        pool = GpuNodePool(name=parts[0], count=int(parts[1]), gpus=int(parts[2]))
        if len(parts) == 4:
            pool.model = parts[3]
        pools.append(pool)
    return pools


def cmd_up(args: argparse.Namespace) -> int:
    folder = state_dir()
    if (folder / "state.json").exists():
        bed = Testbed.from_state(folder)
        if all(c.alive() for c in bed.all_components().values()):
            print(f"# test bed already running: {bed.summary()}", file=sys.stderr)
            print(f"export KUBECONFIG={bed.kubeconfig}")
            return 0
        bed.stop()
        shutil.rmtree(folder, ignore_errors=True)
    config = TestbedConfig(
        node_pools=parse_pools(args.pool)
        if args.pool
        else [GpuNodePool(name="gpu", count=args.nodes, gpus=args.gpus, model=args.model)],
        real_node=args.real_node,
    )
    bed = Testbed.create(config, workdir=folder, tied=False)
    seconds = bed.start()
    print(f"# test bed up in {seconds:.1f}s: {bed.summary()}", file=sys.stderr)
    print(f"# logs: {folder / 'logs'}; stop with: make testbed-down", file=sys.stderr)
    if bed.real is not None:
        print(
            f"# real node {bed.real.name}: taint {REAL_NODE_TAINT}, label "
            f"nvidia.com/gpu.product={bed.real.model}; images: "
            + ", ".join(image.ref for image in bed.real.images.all()),
            file=sys.stderr,
        )
    if args.kueue is not None:
        _start_kueue(bed, folder, args.kueue)
    print(f"export KUBECONFIG={bed.kubeconfig}")
    print(f"export PATH={bed.bin_dir}:$PATH")
    return 0


def _start_kueue(bed: Testbed, folder: Path, gpus: int) -> None:
    """Kueue's manager in the background, and a queue `gpus` (LocalQueue in `default`)."""
    manager = Kueue(bed)
    seconds = manager.start()
    assert manager.component is not None and manager.component.pid is not None
    (folder / "kueue.pid").write_text(str(manager.component.pid))
    queue = Queue(name="gpus", gpus=gpus)
    manager.create_queue(queue, "default")
    print(
        f"# kueue up in {seconds:.1f}s (log {folder / 'logs' / 'kueue.log'}): ClusterQueue and "
        f"LocalQueue 'gpus' ({gpus} {queue.gpu_resource}) in namespace default; label a "
        f"GPUBatch kueue.x-k8s.io/queue-name=gpus",
        file=sys.stderr,
    )


DEMO_POOLS = [
    GpuNodePool(name="fast", count=2, gpus=4, model="NVIDIA-H100-80GB-HBM3"),
    GpuNodePool(name="slow", count=2, gpus=4, model="Tesla-T4"),
]


def _operator_alive(folder: Path) -> bool:
    return _alive(folder / "operator.pid")


def _alive(pid_file: Path) -> bool:
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    """Test bed (mixed GPUs) + CRD + operator in the background + the demo batch, watched."""
    folder = state_dir()
    if not (folder / "state.json").exists():
        bed = Testbed.create(TestbedConfig(node_pools=DEMO_POOLS), workdir=folder, tied=False)
        seconds = bed.start()
        print(f"# test bed up in {seconds:.1f}s: {bed.summary()}", file=sys.stderr)
    bed = Testbed.from_state(folder)
    bed.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "gpubatches.gpubatch.io.yaml"))
    bed.kubectl("wait", "--for=condition=Established", "crd/gpubatches.gpubatch.io")
    if not _operator_alive(folder):
        log = (folder / "logs" / "operator.log").open("ab")
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpubatch.controller.main",
                "--metrics-port=0",
                "--liveness=",
                *lease_flags(bed.certs, folder / "lease-pki", port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env_with_kubeconfig(bed),
            start_new_session=True,
        )
        (folder / "operator.pid").write_text(str(process.pid))
        print(
            f"# operator started (pid {process.pid}, log {folder / 'logs' / 'operator.log'}; "
            f"lease endpoint {lease_url(port)}, CA {bed.certs.ca_cert})",
            file=sys.stderr,
        )
    batch = REPO / "examples" / "demo-testbed.yaml"
    bed.kubectl("delete", "-f", str(batch), "--ignore-not-found", "--wait=true")
    bed.kubectl("apply", "-f", str(batch))
    print(f"# applied {batch.relative_to(REPO)}; watching it:", file=sys.stderr)
    began = time.monotonic()
    while True:
        line = bed.kubectl("get", "gpub", "demo-shots", "--no-headers").stdout.strip()
        print(f"  {line}", file=sys.stderr)
        done = bed.kubectl(
            "get",
            "gpub",
            "demo-shots",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Complete')].status}",
        ).stdout
        if done == "True" or time.monotonic() - began > args.timeout:
            break
        time.sleep(2)
    print(bed.kubectl("get", "gpub", "demo-shots").stdout)
    stats = bed.kubectl("get", "gpub", "demo-shots", "-o", "json").stdout
    status = json.loads(stats).get("status") or {}
    models = status.get("gpuModels") or []
    total = sum(model["succeeded"] for model in models) or 1
    print("per-GPU-model statistics (succeeded tasks):")
    for model in models:
        share = model["succeeded"] / total
        mean, p95 = model.get("meanSeconds") or 0, model.get("p95Seconds") or 0
        print(
            f"  {model['model']:<24} tasks {model['succeeded']:>4} ({share:4.0%})"
            f"   mean {mean:.2f}s   p95 {p95:.2f}s"
        )
    print(f"\nexport KUBECONFIG={bed.kubeconfig}   # then: kubectl get gpub; make testbed-down")
    return 0 if done == "True" else 1


def cmd_down(_: argparse.Namespace) -> int:
    folder = state_dir()
    if not (folder / "state.json").exists():
        print("# no test bed running", file=sys.stderr)
        return 0
    if _operator_alive(folder):
        os.kill(int((folder / "operator.pid").read_text()), signal.SIGTERM)
        time.sleep(1)
    if _alive(folder / "kueue.pid"):
        os.kill(int((folder / "kueue.pid").read_text()), signal.SIGTERM)
    Testbed.from_state(folder).destroy()
    print(f"# test bed stopped and {folder} removed", file=sys.stderr)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    folder = state_dir()
    if not (folder / "state.json").exists():
        print("no test bed running")
        return 1
    bed = Testbed.from_state(folder)
    print(bed.summary())
    return 0 if all(c.alive() for c in bed.all_components().values()) else 1


def cmd_images(_: argparse.Namespace) -> int:
    """Build (or find cached) the real node's images and say where they are."""
    from testbed.realnode import images

    began = time.monotonic()
    for image in images.build_all().all():
        print(f"{image.ref}  {image.archive}")
    print(f"# images ready in {time.monotonic() - began:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the test bed in the background")
    up.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    up.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    up.add_argument("--model", default="NVIDIA-A100-SXM4-80GB", help="nvidia.com/gpu.product")
    up.add_argument(
        "--pool",
        action="append",
        default=[],
        help="NAME:COUNT:GPUS[:MODEL] node pool (repeatable; overrides --nodes)",
    )
    up.add_argument(
        "--kueue",
        type=int,
        metavar="GPUS",
        help="also run Kueue's manager (built once by tests/testbed/kueue.sh) with a queue "
        "'gpus' of this many GPUs",
    )
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also start one real node (containerd + kubelet on this machine; needs root)",
    )
    demo = sub.add_parser("demo", help="test bed + operator + the demo batch, watched")
    demo.add_argument("--timeout", type=float, default=300, help="seconds to watch (300)")

    sub.add_parser("down", help="stop the test bed (and a demo operator), remove its folder")
    sub.add_parser("status", help="say which components are up")
    sub.add_parser("images", help="build (or find cached) the real node's images")
    args = parser.parse_args(argv)
    commands = {
        "up": cmd_up,
        "demo": cmd_demo,
        "down": cmd_down,
        "status": cmd_status,
        "images": cmd_images,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
