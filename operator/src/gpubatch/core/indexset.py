"""Compressed sets of task indexes, written like "0-99,150,200-201".

Why: the status lists which tasks succeeded, failed or were skipped, and must stay small at
100k+ tasks. Like the Kubernetes Job controller's completedIndexes, a set is stored and written
as sorted runs of consecutive indexes, so memory and text grow with the number of runs, not the
number of indexes: a batch whose tasks finish roughly in order has a handful of runs.

Runs are kept as two parallel sorted lists of inclusive bounds, always normalised: sorted,
non-overlapping and non-adjacent (so `format()` output is canonical and equality is cheap).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator


class IndexSet:
    """A set of non-negative integers stored as runs. Mutable, like `set`."""

    __slots__ = ("_count", "_ends", "_starts")

    def __init__(self, indexes: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []  # inclusive
        self._count = 0
        for index in indexes:
            self.add(index)

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_runs(cls, runs: Iterable[tuple[int, int]]) -> IndexSet:
        """Build from (start, stop) pairs, stop exclusive; any order, overlaps allowed."""
        result = cls()
        for start, stop in sorted(runs):
            result._append_or_merge(start, stop - 1)
        return result

    @classmethod
    def interval(cls, start: int, stop: int) -> IndexSet:
        """All indexes in range(start, stop)."""
        return cls.from_runs([(start, stop)] if stop > start else [])

    @classmethod
    def parse(cls, text: str) -> IndexSet:
        """Parse "0-99,150,200-201" (any order and overlaps accepted; "" is the empty set).

        Raises ValueError naming the bad part, so a corrupted status is reported, not guessed at.
        """
        if text == "":
            return cls()
        runs: list[tuple[int, int]] = []
        for part in text.split(","):
            low, dash, high = part.partition("-")
            if not _is_decimal(low) or (dash and not _is_decimal(high)):
                raise ValueError(
                    f"bad index set part {part!r} in {text!r}: expected N or N-M with "
                    "non-negative integers, separated by commas"
                )
            first = int(low)
            last = int(high) if dash else first
            if last < first:
                raise ValueError(f"bad index set part {part!r} in {text!r}: {last} < {first}")
            runs.append((first, last + 1))
        return cls.from_runs(runs)

    def copy(self) -> IndexSet:
        result = IndexSet()
        result._starts = self._starts.copy()
        result._ends = self._ends.copy()
        result._count = self._count
        return result

    # ------------------------------------------------------------------------------ queries
    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        position = bisect_right(self._starts, index) - 1
        return position >= 0 and index <= self._ends[position]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, end + 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # mutable, like set

    def __repr__(self) -> str:
        return f"IndexSet({self.format()!r})"

    def __str__(self) -> str:
        return self.format()

    def runs(self) -> Iterator[tuple[int, int]]:
        """The runs as (start, stop) pairs, stop exclusive, ascending."""
        for start, end in zip(self._starts, self._ends, strict=True):
            yield start, end + 1

    def run_count(self) -> int:
        """Number of runs: what memory and the formatted text grow with."""
        return len(self._starts)

    def min(self) -> int:
        """Smallest index; ValueError when empty."""
        if not self._starts:
            raise ValueError("min() of an empty IndexSet")
        return self._starts[0]

    def max(self) -> int:
        """Largest index; ValueError when empty."""
        if not self._ends:
            raise ValueError("max() of an empty IndexSet")
        return self._ends[-1]

    def format(self) -> str:
        """The canonical text form: ascending runs, "a-b" for two or more, "a" for one."""
        return ",".join(
            str(start) if start == end else f"{start}-{end}"
            for start, end in zip(self._starts, self._ends, strict=True)
        )

    # ---------------------------------------------------------------------------- mutation
    def add(self, index: int) -> None:
        """Add one index, merging with neighbouring runs."""
        self.add_range(index, index + 1)

    def add_range(self, start: int, stop: int) -> None:
        """Add every index in range(start, stop); O(runs) worst case, O(log runs) typical."""
        _check_index(start)
        if stop <= start:
            return
        last = stop - 1
        # Runs that overlap or touch [start, last] are those from `low` to `high - 1`.
        low = bisect_left(self._ends, start - 1)
        high = bisect_right(self._starts, last + 1)
        if low < high:
            start = min(start, self._starts[low])
            last = max(last, self._ends[high - 1])
            removed = sum(self._ends[i] - self._starts[i] + 1 for i in range(low, high))
            del self._starts[low:high]
            del self._ends[low:high]
            self._count -= removed
        self._starts.insert(low, start)
        self._ends.insert(low, last)
        self._count += last - start + 1

    def discard(self, index: int) -> None:
        """Remove one index if present, splitting its run."""
        self.discard_range(index, index + 1)

    def remove(self, index: int) -> None:
        """Remove one index; KeyError when absent, like `set.remove`."""
        if index not in self:
            raise KeyError(index)
        self.discard(index)

    def discard_range(self, start: int, stop: int) -> None:
        """Remove every index in range(start, stop) that is present."""
        if stop <= start:
            return
        last = stop - 1
        low = bisect_left(self._ends, start)
        high = bisect_right(self._starts, last)
        if low >= high:
            return
        keep_starts: list[int] = []
        keep_ends: list[int] = []
        if self._starts[low] < start:
            keep_starts.append(self._starts[low])
            keep_ends.append(start - 1)
        if self._ends[high - 1] > last:
            keep_starts.append(last + 1)
            keep_ends.append(self._ends[high - 1])
        removed = sum(self._ends[i] - self._starts[i] + 1 for i in range(low, high))
        kept = sum(e - s + 1 for s, e in zip(keep_starts, keep_ends, strict=True))
        self._starts[low:high] = keep_starts
        self._ends[low:high] = keep_ends
        self._count += kept - removed

    def update(self, other: IndexSet) -> None:
        """Add every index of `other` (in place union)."""
        merged = self.union(other)
        self._starts, self._ends, self._count = merged._starts, merged._ends, merged._count

    # ------------------------------------------------------------------------ set algebra
    def union(self, other: IndexSet) -> IndexSet:
        """Indexes in either set; O(runs of both)."""
        result = IndexSet()
        a = list(self.runs())
        b = list(other.runs())
        i = j = 0
        while i < len(a) or j < len(b):
            if j >= len(b) or (i < len(a) and a[i][0] <= b[j][0]):
                start, stop = a[i]
                i += 1
            else:
                start, stop = b[j]
                j += 1
            result._append_or_merge(start, stop - 1)
        return result

    def intersection(self, other: IndexSet) -> IndexSet:
        """Indexes in both sets; O(runs of both)."""
        result = IndexSet()
        i = j = 0
        while i < len(self._starts) and j < len(other._starts):
            start = max(self._starts[i], other._starts[j])
            end = min(self._ends[i], other._ends[j])
            if start <= end:
                result._append_or_merge(start, end)
            if self._ends[i] < other._ends[j]:
                i += 1
            else:
                j += 1
        return result

    def difference(self, other: IndexSet) -> IndexSet:
        """Indexes in this set but not in `other`."""
        result = self.copy()
        for start, stop in other.runs():
            result.discard_range(start, stop)
        return result

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    # ---------------------------------------------------------------------------- private
    def _append_or_merge(self, start: int, end: int) -> None:
        """Append a run that starts at or after the last run's start (used by sorted builds)."""
        _check_index(start)
        if self._ends and start <= self._ends[-1] + 1:
            if end > self._ends[-1]:
                self._count += end - self._ends[-1]
                self._ends[-1] = end
            return
        self._starts.append(start)
        self._ends.append(end)
        self._count += end - start + 1


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _check_index(index: int) -> None:
    if index < 0:
        raise ValueError(f"task indexes are non-negative, got {index}")
