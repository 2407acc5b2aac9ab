"""Profile the operator with py-spy through one dispatch-style batch; print where its CPU goes.

`python -m bench.profile [--tasks 2000]` (PYTHONPATH=tests). py-spy samples the operator process
(`--nonblocking`, so the operator is never paused) and writes collapsed stacks; this prints the
operator's CPU seconds per 1,000 tasks and the functions holding the most samples, inclusive
and exclusive, so a change can be compared before and after on the same command.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import bench_env, wait_batch
from bench.scenarios import _create_batch, _gpubatch
from support.pods import gpu_pod_template
from testbed import GpuNodePool


def _top(stacks: Path, limit: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";") if f]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            exclusive[frames[-1]] += count
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("exclusive", exclusive)):
        lines.append(f"-- {title}")
        for frame, count in counter.most_common(limit):
            lines.append(f"{100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pools = [GpuNodePool(name="wide", count=8, gpus=128)]
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        workdir = Path(tmp)
        with bench_env(workdir, pools, operator_args=["--max-pending=512"]) as env:
            ns = env.namespace("prof")
            stacks = args.out or workdir / "stacks.txt"
            pid = env.operator.process.pid
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--nonblocking", "--format", "raw",
                 "--rate", "200", "--output", str(stacks)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            cpu0 = env.operator.cpu_seconds()
            began = time.monotonic()
            body = _gpubatch(
                "prof",
                tasks={"range": {"stop": args.tasks}},
                template=gpu_pod_template(duration="50ms"),
                maxPending=512,
            )
            _create_batch(env, ns, body)
            wait_batch(env.testbed, ns, "prof", timeout=3600)
            elapsed = time.monotonic() - began
            cpu = env.operator.cpu_seconds() - cpu0
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(timeout=60)
            print(f"{args.tasks} tasks in {elapsed:.1f} s ({args.tasks / elapsed:.1f} tasks/s)")
            print(f"operator CPU {cpu:.1f} s = {cpu / args.tasks * 1000:.2f} s per 1k tasks")
            print(_top(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
