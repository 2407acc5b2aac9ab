"""A picture of a batch over time: one row per GPU (or node lane), one bar per task attempt.

People would rather look than read: an idle GPU at the end, a slow card, a burst of failures
are obvious in a timeline and hidden in a table. The bars come from what still knows when each
attempt ran:

- local mode: `attempts.jsonl` has every attempt with its slot, so each row is one GPU slot;
- a cluster: the task pods that still exist (their container start and finish times). The
  operator deletes succeeded pods by default (`podCleanup.succeeded: Delete`), so a complete
  timeline needs `podCleanup: {succeeded: Keep}`; the plot says how many tasks it shows.
  Kubernetes does not say which GPU of a node a pod got, so a node's attempts are packed into
  as many rows as ran at once, which is one row per GPU in use.

matplotlib is an optional extra (`pip install "gpubatch[plot]"`), imported only to plot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from gpubatch.api.result import Outcome, TaskResult
from gpubatch.cli.errors import CliError, Exit
from gpubatch.core.podview import PodView
from gpubatch.local.journal import AttemptRecord

COLOURS: Final = {
    "succeeded": "#2e7d32",
    "skipped": "#9e9e9e",
    "failed": "#c62828",
    "stopped": "#ef6c00",
    "running": "#1565c0",
}
#: Resolution of the start and finish times Kubernetes records for a container.
POD_TIME_RESOLUTION_SECONDS: Final = 1.0
#: Bars are labelled with their task index when there are at most this many.
LABELLED_BARS_UP_TO: Final = 300


@dataclass(frozen=True)
class Bar:
    """One attempt: which row, which task, when (seconds since the epoch), how it ended."""

    lane: str
    index: int
    start: float
    end: float
    outcome: str


def bars_from_records(records: Iterable[AttemptRecord]) -> list[Bar]:
    """Local mode: one row per slot, labelled with its device model."""
    return [Bar(f"{r.slot} ({r.model})", r.index, r.start, r.end, r.outcome) for r in records]


def bars_from_pods(
    views: Iterable[PodView], node_models: Mapping[str, str], now: float | None = None
) -> list[Bar]:
    """A cluster: the pods that still exist and have started, packed into rows per node."""
    now = time.time() if now is None else now
    bars = []
    for view in views:
        if view.started_at is None or view.node is None:
            continue
        if view.phase == "Succeeded":
            result = TaskResult.try_decode(view.message)
            skipped = result is not None and result.outcome is Outcome.SKIPPED
            outcome = "skipped" if skipped else "succeeded"
        elif view.phase == "Failed":
            outcome = "failed"
        else:
            outcome = "running"
        end = view.finished_at if view.finished_at is not None else now
        # Pod times are whole seconds: a short task can start and finish "at once". Drawn (and
        # packed) as one second, it still shows, and concurrent ones still get their own rows.
        end = max(end, view.started_at + POD_TIME_RESOLUTION_SECONDS)
        model = node_models.get(view.node)
        lane = f"{view.node} ({model})" if model else view.node
        bars.append(Bar(lane, view.index, view.started_at, end, outcome))
    return pack(bars)


def pack(bars: Sequence[Bar]) -> list[Bar]:
    """Split each lane into rows so that no two bars in a row overlap (first fit by start).

    A node running 8 tasks at once becomes 8 rows: one per GPU in use.
    """
    packed: list[Bar] = []
    by_lane: dict[str, list[Bar]] = {}
    for bar in bars:
        by_lane.setdefault(bar.lane, []).append(bar)
    for lane, members in sorted(by_lane.items()):
        row_ends: list[float] = []
        for bar in sorted(members, key=lambda b: (b.start, b.end)):
            row = next((i for i, end in enumerate(row_ends) if end <= bar.start), None)
            if row is None:
                row = len(row_ends)
                row_ends.append(bar.end)
            else:
                row_ends[row] = bar.end
            packed.append(replace(bar, lane=f"{lane} #{row}"))
    return packed


def plot_timeline(bars: Sequence[Bar], path: str | Path, title: str) -> None:
    """Write the timeline as an image (PNG, SVG or PDF by the file's extension)."""
    if not bars:
        raise CliError("nothing to plot: no task attempt with start and end times is known")
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; never opens a window
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise CliError(
            'plotting needs matplotlib: pip install "gpubatch[plot]"', Exit.ENVIRONMENT
        ) from None
    lanes = sorted({b.lane for b in bars})
    row = {lane: i for i, lane in enumerate(lanes)}
    origin = min(b.start for b in bars)
    height = max(2.5, 0.35 * len(lanes) + 1.5)
    figure, axes = plt.subplots(figsize=(11, height))
    for outcome, colour in COLOURS.items():
        spans: dict[int, list[tuple[float, float]]] = {}
        for bar in bars:
            if bar.outcome == outcome:
                spans.setdefault(row[bar.lane], []).append(
                    (bar.start - origin, max(bar.end - bar.start, 1e-3))
                )
        for y, pieces in spans.items():
            axes.broken_barh(
                pieces, (y - 0.4, 0.8), facecolors=colour, edgecolors="white", linewidth=0.3
            )
    span = max(b.end for b in bars) - origin
    if len(bars) <= LABELLED_BARS_UP_TO:
        for bar in bars:
            if bar.end - bar.start >= 0.02 * span:
                axes.text(
                    (bar.start + bar.end) / 2 - origin,
                    row[bar.lane],
                    str(bar.index),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white",
                )
    axes.set_yticks(range(len(lanes)), labels=lanes, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first task started")
    axes.set_title(title, fontsize=10)
    shown = sorted({b.outcome for b in bars})
    axes.legend(
        handles=[Patch(color=COLOURS[o], label=o) for o in shown if o in COLOURS],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(str(path), dpi=120)
    except (OSError, ValueError) as err:
        raise CliError(f"cannot write {path}: {err}") from None
    finally:
        plt.close(figure)
