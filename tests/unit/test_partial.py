"""Naming of partial (temporary) outputs in atomic mode."""

from __future__ import annotations

import pytest

from gpubatch.core.partial import MAX_NAME_BYTES, is_partial, partial_path, partial_paths

pytestmark = pytest.mark.unit


def test_partial_is_hidden_in_the_same_directory_and_keeps_the_suffix() -> None:
    assert partial_path("/d/clip.mp4") == "/d/.clip.mp4.gpubatch-partial.mp4"


def test_partial_of_an_object_url_stays_under_the_same_prefix() -> None:
    assert (
        partial_path("s3://bucket/runs/7/out.npz")
        == "s3://bucket/runs/7/.out.npz.gpubatch-partial.npz"
    )


def test_only_the_last_suffix_is_repeated() -> None:
    assert partial_path("x/data.tar.gz") == "x/.data.tar.gz.gpubatch-partial.gz"


def test_name_without_suffix_and_relative_name() -> None:
    assert partial_path("out/result") == "out/.result.gpubatch-partial"
    assert partial_path("result.json") == ".result.json.gpubatch-partial.json"


def test_directory_output_gets_a_sibling_partial_directory() -> None:
    assert partial_path("/out/frames/") == "/out/.frames.gpubatch-partial"


def test_partial_is_deterministic_and_distinct_from_the_final_path() -> None:
    finals = ["/o/a.mp4", "/o/b.mp4", "/o/.a.mp4"]
    partials = partial_paths(finals)
    assert partials == partial_paths(finals)
    assert len(set(partials)) == len(finals)
    assert not set(partials) & set(finals)


def test_very_long_name_is_shortened_to_fit_the_file_name_limit() -> None:
    long_name = "v" * 250 + ".mp4"
    partial = partial_path(f"/out/{long_name}")
    name = partial.rpartition("/")[2]
    assert partial.startswith("/out/.")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".gpubatch-partial.mp4")
    assert partial != partial_path(f"/out/{'w' * 250}.mp4")


@pytest.mark.parametrize("bad", ["", "/", "s3://bucket", "/out/..", "dir/."])
def test_paths_without_a_file_name_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="does not end in a file name"):
        partial_path(bad)


def test_is_partial_recognises_partials_only() -> None:
    assert is_partial(partial_path("/d/clip.mp4"))
    assert is_partial(partial_path("s3://b/" + "n" * 300))
    assert not is_partial("/d/clip.mp4")
    assert not is_partial("/d/.hidden")
