"""IndexSet behaves exactly like a Python set of ints, and its text form round-trips."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpubatch.core.indexset import IndexSet

pytestmark = pytest.mark.unit

# Small values so runs, adjacency and overlaps happen often.
indexes = st.integers(min_value=0, max_value=200)
index_lists = st.lists(indexes, max_size=60)
runs = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


def build(values: list[int]) -> IndexSet:
    return IndexSet(values)


# ------------------------------------------------------------------ properties against `set`
@given(index_lists)
def test_iteration_is_the_sorted_set(values):
    assert list(build(values)) == sorted(set(values))


@given(index_lists, indexes)
def test_membership_matches_a_set(values, probe):
    assert (probe in build(values)) == (probe in set(values))


@given(index_lists)
def test_count_matches_a_set(values):
    assert len(build(values)) == len(set(values))


@given(index_lists, index_lists)
def test_union_matches_a_set(a, b):
    assert list(build(a) | build(b)) == sorted(set(a) | set(b))


@given(index_lists, index_lists)
def test_intersection_matches_a_set(a, b):
    assert list(build(a) & build(b)) == sorted(set(a) & set(b))


@given(index_lists, index_lists)
def test_difference_matches_a_set(a, b):
    assert list(build(a) - build(b)) == sorted(set(a) - set(b))


@given(index_lists, index_lists)
def test_in_place_update_matches_a_set(a, b):
    result = build(a)
    result.update(build(b))
    assert list(result) == sorted(set(a) | set(b))
    assert len(result) == len(set(a) | set(b))


@given(index_lists, index_lists)
def test_discard_matches_a_set(values, removed):
    result = build(values)
    expected = set(values)
    for value in removed:
        result.discard(value)
        expected.discard(value)
    assert list(result) == sorted(expected)
    assert len(result) == len(expected)


@given(runs, runs)
def test_range_add_and_discard_match_a_set(added, removed):
    result = IndexSet()
    expected: set[int] = set()
    for start, stop in added:
        result.add_range(start, stop)
        expected |= set(range(start, stop))
    for start, stop in removed:
        result.discard_range(start, stop)
        expected -= set(range(start, stop))
    assert list(result) == sorted(expected)
    assert len(result) == len(expected)


@given(index_lists)
def test_format_then_parse_round_trips(values):
    original = build(values)
    assert IndexSet.parse(original.format()) == original


@given(index_lists)
def test_runs_are_maximal_so_the_text_is_canonical(values):
    result = build(values)
    pairs = list(result.runs())
    # sorted, non-overlapping and never touching: adjacent runs would have been merged
    for (_, stop), (start, _) in itertools.pairwise(pairs):
        assert start > stop
    assert result.run_count() == len(pairs)


@given(runs)
def test_from_runs_accepts_any_order_and_overlap(pairs):
    expected = sorted({i for start, stop in pairs for i in range(start, stop)})
    assert list(IndexSet.from_runs(reversed(pairs))) == expected


# --------------------------------------------------------------------------------- examples
def test_format_uses_ranges_and_singletons():
    assert IndexSet([*range(100), 150, 200, 201]).format() == "0-99,150,200-201"


def test_empty_set_formats_as_empty_string_and_parses_back():
    assert IndexSet().format() == ""
    assert IndexSet.parse("") == IndexSet()
    assert not IndexSet()


def test_parse_normalises_unsorted_overlapping_text():
    assert IndexSet.parse("5-9,0-2,3,8-12").format() == "0-3,5-12"


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "1,,2", " 1", "1 - 2", "+1", "1-2-3"])
def test_parse_rejects_malformed_text_naming_the_part(text):
    with pytest.raises(ValueError, match="bad index set part"):
        IndexSet.parse(text)


def test_negative_indexes_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        IndexSet([-1])


def test_storage_grows_with_runs_not_indexes():
    big = IndexSet.interval(0, 100_000)
    big.discard(500)
    assert len(big) == 99_999
    assert big.run_count() == 2
    assert big.format() == "0-499,501-99999"


def test_remove_of_absent_index_raises_like_set():
    with pytest.raises(KeyError):
        IndexSet([1]).remove(2)


def test_min_and_max_are_the_extremes():
    values = IndexSet([7, 3, 9, 4])
    assert (values.min(), values.max()) == (3, 9)


def test_worst_case_status_text_at_100k_tasks_is_bounded_by_runs():
    # Every other task succeeded: the worst pattern, 50k runs. Mostly-ordered completion, the
    # normal case, is a few runs; this documents the bound rather than the usual size.
    alternate = IndexSet(range(0, 100_000, 2))
    assert alternate.run_count() == 50_000
    assert len(IndexSet.interval(0, 100_000).format()) == len("0-99999")
