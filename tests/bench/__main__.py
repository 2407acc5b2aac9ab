"""`python -m bench [scenario ...] [--smoke]`: run benchmarks, print and save the results.

Results go to tests/bench/results/<scenario>.json; BENCHMARKS.md quotes them with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.scenarios import SCENARIOS, SMOKE, Scale

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what CI runs)")
    parser.add_argument("--tasks", type=int, help="override the task count of every scenario")
    parser.add_argument(
        "--mean-seconds", type=float, help="mean task duration of the makespan scenario"
    )
    parser.add_argument(
        "--skewed-seconds", type=float, help="sum of the local scenario's skewed task durations"
    )
    args = parser.parse_args(argv)
    scale = SMOKE if args.smoke else Scale()
    if args.tasks:
        scale = replace(
            scale,
            dispatch_tasks=args.tasks,
            makespan_tasks=args.tasks,
            mixed_tasks=args.tasks,
            warm_tasks=args.tasks,
            warm_rate_tasks=args.tasks,
        )
    if args.skewed_seconds:
        scale = replace(scale, local_skewed_seconds=args.skewed_seconds)
    if args.mean_seconds:
        scale = replace(scale, mean_seconds=args.mean_seconds)
    RESULTS.mkdir(exist_ok=True)
    for name in args.scenarios or list(SCENARIOS):
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            result = SCENARIOS[name](scale, Path(tmp))
        result["wall_seconds"] = time.monotonic() - began
        result["smoke"] = args.smoke
        text = json.dumps(result, indent=2, default=str)
        print(f"== {name}\n{text}", flush=True)
        if not args.smoke:
            (RESULTS / f"{name}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
