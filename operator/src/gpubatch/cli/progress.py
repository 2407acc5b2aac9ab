"""A progress bar with counts, rate and ETA, for `gpubatch run` and `gpubatch watch`.

Both commands know the same things at each moment - the status counts of one batch - so they
share this bar. The rate counts tasks that finished while we watched, over a sliding window, so
it follows a batch that speeds up (more GPUs) or slows down (longer tasks), and tasks already
finished before we started (skipped, or done before `watch` began) do not inflate it.

On a terminal the bar redraws in place on stderr; elsewhere (a CI log, a pipe) it prints a
plain line only now and then, so logs stay readable. Messages (a task failed, a retry) are
printed above the bar without breaking it.
"""

from __future__ import annotations

import collections
import shutil
import sys
import time
from typing import Final, TextIO

from gpubatch.api.status import TaskCounts
from gpubatch.cli.table import format_duration

#: Finish events older than this no longer count towards the rate.
RATE_WINDOW_SECONDS: Final = 60.0
#: Without a terminal, the most often a progress line is printed.
PLAIN_LINE_EVERY_SECONDS: Final = 5.0
#: On a terminal, the most often the bar is redrawn.
REDRAW_EVERY_SECONDS: Final = 0.2
BAR_WIDTH: Final = 24


class RateTracker:
    """Finished tasks per second over a sliding window, and the time left at that rate."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, now: float, finished: int) -> None:
        """Record the number of finished tasks seen at `now` (monotonic seconds)."""
        self._samples.append((now, finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Tasks per second, or None before two samples span any time."""
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return max(0.0, (n1 - n0) / (t1 - t0))

    def eta(self, remaining: int) -> float | None:
        """Seconds until `remaining` tasks finish at the current rate (None when unknown)."""
        if remaining <= 0:
            return 0.0
        rate = self.rate()
        return remaining / rate if rate else None


def progress_line(name: str, counts: TaskCounts, rate: float | None, eta: float | None) -> str:
    """`name [#####.....] 120/240 50% | 118 ok, 1 failed, 1 skipped, 8 running | 3.2/s | ETA 37s`"""
    total = counts.total
    done = counts.finished()
    share = done / total if total else 1.0
    filled = round(share * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    parts = [
        f"{name} [{bar}] {done}/{total} {share:4.0%}",
        f"{counts.succeeded} ok, {counts.failed} failed, {counts.skipped} skipped, "
        f"{counts.running} running",
    ]
    if rate:
        parts.append(f"{rate:.3g} tasks/s" if rate >= 0.1 else f"{rate * 60:.3g} tasks/min")
    if done < total:
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
    return " | ".join(parts)


class ProgressDisplay:
    """Draws the progress line on `stream` and prints messages above it."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = enabled and self._stream.isatty()
        self._enabled = enabled
        self._shown = ""
        self._last_drawn = -float("inf")  # when a line was last written
        self._last_text = ""

    def update(self, text: str, *, force: bool = False) -> None:
        """Show the current progress (redrawn on a terminal; a line now and then elsewhere)."""
        if not self._enabled:
            return
        now = time.monotonic()
        if self._tty:
            if force or now - self._last_drawn >= REDRAW_EVERY_SECONDS:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self._draw(text[:width])
                self._last_drawn = now
            return
        if text != self._last_text and (
            force or now - self._last_drawn >= PLAIN_LINE_EVERY_SECONDS
        ):
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_drawn, self._last_text = now, text

    def message(self, text: str) -> None:
        """Print a line above the progress bar (always shown, also when the bar is off)."""
        shown = self._shown
        if shown:
            self._draw("")
        self._stream.write(text + "\n")
        if shown:
            self._draw(shown)
        else:
            self._stream.flush()

    def close(self) -> None:
        """Leave the last bar on screen and move below it."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = ""

    def _draw(self, text: str) -> None:
        pad = max(0, len(self._shown) - len(text))
        self._stream.write("\r" + text + " " * pad + ("\r" + text if pad else ""))
        self._stream.flush()
        self._shown = text


class ProgressReporter:
    """The local runner's `Reporter`: the progress line with rate and ETA, and its messages.

    The rate counts only tasks finished during this run (`finished_before` were done already),
    so a re-run that skips most of a batch does not report an absurd speed.
    """

    def __init__(self, name: str, display: ProgressDisplay, finished_before: int = 0) -> None:
        self._name = name
        self._display = display
        self._finished_before = finished_before
        self._rate = RateTracker()

    def message(self, text: str) -> None:
        self._display.message(text)

    def progress(self, counts: TaskCounts, *, force: bool = False) -> None:
        self._rate.observe(time.monotonic(), counts.finished() - self._finished_before)
        remaining = counts.total - counts.finished()
        line = progress_line(self._name, counts, self._rate.rate(), self._rate.eta(remaining))
        self._display.update(line, force=force)
