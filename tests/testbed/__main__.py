"""`python -m testbed up|down|status` — the test bed for people (make testbed-up / testbed-down).

`up` leaves the processes running in the background and prints the `export KUBECONFIG=...` line;
`down` stops them and removes the folder. State lives in .testbed/ at the repository root
(or $GPUBATCH_TESTBED_DIR).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from testbed.controlplane import REPO, Testbed, TestbedConfig
from testbed.nodes import GpuNodePool


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
        if all(c.alive() for c in bed.components.values()):
            print(f"# test bed already running: {bed.summary()}", file=sys.stderr)
            print(f"export KUBECONFIG={bed.kubeconfig}")
            return 0
        bed.stop()
        shutil.rmtree(folder, ignore_errors=True)
    config = TestbedConfig(
        node_pools=parse_pools(args.pool)
        if args.pool
        else [GpuNodePool(name="gpu", count=args.nodes, gpus=args.gpus, model=args.model)]
    )
    bed = Testbed.create(config, workdir=folder, tied=False)
    seconds = bed.start()
    print(f"# test bed up in {seconds:.1f}s: {bed.summary()}", file=sys.stderr)
    print(f"# logs: {folder / 'logs'}; stop with: make testbed-down", file=sys.stderr)
    print(f"export KUBECONFIG={bed.kubeconfig}")
    print(f"export PATH={bed.bin_dir}:$PATH")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    folder = state_dir()
    if not (folder / "state.json").exists():
        print("# no test bed running", file=sys.stderr)
        return 0
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
    return 0 if all(c.alive() for c in bed.components.values()) else 1


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
    sub.add_parser("down", help="stop the test bed and remove its folder")
    sub.add_parser("status", help="say which components are up")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
