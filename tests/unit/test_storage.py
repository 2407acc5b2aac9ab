"""Output existence, globbing, manifests and atomic renames on real temp dirs and a real S3 API.

S3 tests talk HTTP to moto's server (see s3_standin.py); nothing is mocked in-process.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest
from s3_standin import S3StandIn, bucket, s3_server

from gpubatch.core.expand import FileInfo
from gpubatch.core.partial import partial_path
from gpubatch.edges import storage

__all__ = ["bucket", "s3_server"]  # fixtures used by name below


def touch(path: Path, text: str = "x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------ local paths
def test_existing_returns_exactly_the_paths_that_exist(tmp_path: Path) -> None:
    present = [touch(tmp_path / "out" / f"{i}.mp4") for i in range(3)]
    absent = [str(tmp_path / "out" / "9.mp4"), str(tmp_path / "nowhere" / "1.mp4")]
    assert storage.existing(present + absent) == set(present)


def test_large_groups_are_listed_and_give_the_same_answer_as_small_ones(tmp_path: Path) -> None:
    many = storage.PROBE_PER_PATH_UP_TO * 4
    paths = [str(tmp_path / f"f{i}.txt") for i in range(many)]
    for path in paths[::2]:
        touch(Path(path))
    assert storage.existing(paths) == set(paths[::2])
    assert storage.existing(paths[:4]) == {paths[0], paths[2]}


def test_directory_outputs_and_trailing_slashes_count(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    assert storage.existing([f"{tmp_path}/frames/", f"{tmp_path}/frames"]) == {
        f"{tmp_path}/frames/",
        f"{tmp_path}/frames",
    }


def test_broken_symlink_is_not_an_existing_output(tmp_path: Path) -> None:
    paths = [touch(tmp_path / f"ok{i}") for i in range(storage.PROBE_PER_PATH_UP_TO)]
    (tmp_path / "dangling").symlink_to(tmp_path / "missing-target")
    (tmp_path / "good-link").symlink_to(tmp_path / "ok0")
    paths += [str(tmp_path / "dangling"), str(tmp_path / "good-link")]
    found = storage.existing(paths)
    assert str(tmp_path / "dangling") not in found
    assert str(tmp_path / "good-link") in found


def test_file_urls_and_relative_paths_are_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    assert storage.existing([f"file://{tmp_path}/a.txt", "a.txt", "b.txt"]) == {
        f"file://{tmp_path}/a.txt",
        "a.txt",
    }


def test_all_exist_is_true_only_when_every_path_exists(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a"), touch(tmp_path / "b")
    assert storage.all_exist([a, b, a])
    assert not storage.all_exist([a, str(tmp_path / "c")])


@pytest.mark.parametrize("count", [1, storage.PROBE_PER_PATH_UP_TO + 1])
def test_a_directory_that_cannot_be_read_is_an_error_not_absence(
    tmp_path: Path, count: int
) -> None:
    # A symlink loop fails with ELOOP even for root (unlike a chmod 0 directory).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    paths = [str(tmp_path / "loop" / f"{i}.mp4") for i in range(count)]
    with pytest.raises(storage.StorageError, match=r"cannot (list|check)"):
        storage.existing(paths)


def test_bulk_check_of_100k_outputs_is_fast(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(0, 100_000, 2):
        os.close(os.open(flat / f"out-{i:06d}.mp4", os.O_CREAT | os.O_WRONLY, 0o644))
    nested = [str(tmp_path / "nested" / f"{i // 100}" / f"{i}.mp4") for i in range(100_000)]
    flat_paths = [str(flat / f"out-{i:06d}.mp4") for i in range(100_000)]
    started = time.perf_counter()
    found = storage.existing(flat_paths)
    flat_seconds = time.perf_counter() - started
    started = time.perf_counter()
    assert storage.existing(nested) == set()
    nested_seconds = time.perf_counter() - started
    assert len(found) == 50_000
    assert flat_seconds < 5, flat_seconds
    assert nested_seconds < 5, nested_seconds


def test_glob_lists_files_sorted_without_hidden_partials_or_folders(tmp_path: Path) -> None:
    for name in ["b.mp4", "a.mp4", "sub/c.mp4", "sub/deeper/d.mp4"]:
        touch(tmp_path / name)
    touch(Path(partial_path(str(tmp_path / "e.mp4"))))
    (tmp_path / "folder.mp4").mkdir()

    def glob(pattern: str) -> list[str]:
        return [info.path for info in storage.glob_files(pattern)]

    assert glob(f"{tmp_path}/*.mp4") == [f"{tmp_path}/a.mp4", f"{tmp_path}/b.mp4"]
    assert glob(f"{tmp_path}/**/*.mp4") == [
        f"{tmp_path}/a.mp4",
        f"{tmp_path}/b.mp4",
        f"{tmp_path}/sub/c.mp4",
        f"{tmp_path}/sub/deeper/d.mp4",
    ]
    assert glob(f"{tmp_path}/*.nothing") == []


def test_glob_files_reports_sizes(tmp_path: Path) -> None:
    touch(tmp_path / "small.bin", "ab")
    touch(tmp_path / "big.bin", "a" * 1000)
    assert storage.glob_files(f"{tmp_path}/*.bin") == [
        FileInfo(f"{tmp_path}/big.bin", 1000),
        FileInfo(f"{tmp_path}/small.bin", 2),
    ]


def test_manifest_lines_keep_their_endings_for_csv(tmp_path: Path) -> None:
    manifest = tmp_path / "tasks.csv"
    manifest.write_bytes(b'video,note\r\na.mp4,"two\nlines"\r\nb.mp4,\xc3\xbc\r\n')
    assert list(storage.read_lines(str(manifest))) == [
        "video,note\r\n",
        'a.mp4,"two\n',
        'lines"\r\n',
        "b.mp4,ü\r\n",
    ]


def test_gzipped_manifest_is_decompressed(tmp_path: Path) -> None:
    manifest = tmp_path / "tasks.txt.gz"
    with gzip.open(manifest, "wt") as handle:
        handle.write("a\nb\n")
    assert list(storage.read_lines(str(manifest))) == ["a\n", "b\n"]


def test_missing_manifest_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match="does not exist"):
        list(storage.read_lines(str(tmp_path / "none.txt")))


def test_storage_object_fits_the_expansion_protocols(tmp_path: Path) -> None:
    touch(tmp_path / "x.txt", "line\n")
    io = storage.Storage()
    assert io.glob(f"{tmp_path}/*.txt") == [FileInfo(f"{tmp_path}/x.txt", 5)]
    assert list(io.open(f"{tmp_path}/x.txt")) == ["line\n"]


def test_promote_renames_a_partial_file_over_the_final_path(tmp_path: Path) -> None:
    final = str(tmp_path / "out.mp4")
    touch(Path(final), "old")
    partial = touch(Path(partial_path(final)), "new")
    storage.promote(partial, final)
    assert Path(final).read_text() == "new"
    assert not Path(partial).exists()


def test_promote_replaces_an_existing_output_directory(tmp_path: Path) -> None:
    final = tmp_path / "frames"
    touch(final / "old.png")
    partial = Path(partial_path(str(final)))
    touch(partial / "new.png")
    storage.promote(str(partial), str(final))
    assert sorted(p.name for p in final.iterdir()) == ["new.png"]
    assert not partial.exists()


def test_promote_of_a_missing_partial_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match="cannot move"):
        storage.promote(str(tmp_path / "no"), str(tmp_path / "yes"))


def test_remove_deletes_files_and_folders_and_ignores_missing(tmp_path: Path) -> None:
    file, folder = touch(tmp_path / "f"), tmp_path / "d"
    touch(folder / "inner")
    storage.remove([file, str(folder), str(tmp_path / "never-existed")])
    assert list(tmp_path.iterdir()) == []


def test_ensure_parent_dirs_creates_local_parents_only(tmp_path: Path) -> None:
    problems = storage.ensure_parent_dirs([f"{tmp_path}/a/b/out.mp4", "s3://bucket/x/y.mp4"])
    assert problems == []
    assert (tmp_path / "a" / "b").is_dir()


def test_url_with_unknown_protocol_is_an_error() -> None:
    with pytest.raises(storage.StorageError):
        storage.existing(["nosuchproto://bucket/a.mp4"])


# ---------------------------------------------------------------------------- S3 (moto server)
def put(s3: S3StandIn, url: str, data: bytes = b"x") -> str:
    import fsspec

    with fsspec.open(url, "wb") as handle:
        handle.write(data)
    return url


def test_s3_existing_checks_a_prefix_in_bulk(s3_server: S3StandIn, bucket: str) -> None:
    many = storage.PROBE_PER_PATH_UP_TO * 3
    urls = [f"s3://{bucket}/out/{i}.npz" for i in range(many)]
    for url in urls[::3]:
        put(s3_server, url)
    other = [f"s3://{bucket}/elsewhere/a.npz", f"s3://{bucket}/out/0.npz.bak"]
    assert storage.existing(urls + other) == set(urls[::3])


def test_s3_small_group_and_missing_prefix(s3_server: S3StandIn, bucket: str) -> None:
    present = put(s3_server, f"s3://{bucket}/one/a.txt")
    assert storage.existing([present, f"s3://{bucket}/one/b.txt", f"s3://{bucket}/nope/c"]) == {
        present
    }


def test_s3_sees_an_object_written_after_a_listing(s3_server: S3StandIn, bucket: str) -> None:
    urls = [f"s3://{bucket}/late/{i}" for i in range(storage.PROBE_PER_PATH_UP_TO + 2)]
    assert storage.existing(urls) == set()
    put(s3_server, urls[0])
    assert storage.existing(urls) == {urls[0]}


def test_s3_glob_and_manifest(s3_server: S3StandIn, bucket: str) -> None:
    put(s3_server, f"s3://{bucket}/in/b.jpg", b"bb")
    put(s3_server, f"s3://{bucket}/in/a.jpg", b"a")
    put(s3_server, f"s3://{bucket}/in/c.txt")
    assert storage.glob_files(f"s3://{bucket}/in/*.jpg") == [
        FileInfo(f"s3://{bucket}/in/a.jpg", 1),
        FileInfo(f"s3://{bucket}/in/b.jpg", 2),
    ]
    put(s3_server, f"s3://{bucket}/m.txt.gz", gzip.compress(b"x,1\ny,2\n"))
    assert list(storage.read_lines(f"s3://{bucket}/m.txt.gz")) == ["x,1\n", "y,2\n"]
    with pytest.raises(storage.StorageError):
        list(storage.read_lines(f"s3://{bucket}/absent.txt"))


def test_s3_promote_and_remove(s3_server: S3StandIn, bucket: str) -> None:
    final = f"s3://{bucket}/res/out.npz"
    partial = put(s3_server, partial_path(final), b"payload")
    storage.promote(partial, final)
    assert storage.existing([final, partial]) == {final}
    storage.remove([final, f"s3://{bucket}/res/never"])
    assert storage.existing([final]) == set()
