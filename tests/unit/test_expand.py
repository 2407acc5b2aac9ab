"""Task expansion: deterministic index -> task mapping, random access, and clear refusals."""

from __future__ import annotations

import fnmatch
import json
import random
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpubatch.api.spec import MAX_TASKS, GPUBatchSpec, Order, TaskSource
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import FileInfo, Task, expand
from gpubatch.core.order import dispatch_order
from gpubatch.core.prepare import parse_spec, prepare_batch

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- in-memory fakes
class FakeFiles:
    """A FileLister over an in-memory file list, returning matches in a scrambled order."""

    def __init__(self, files: dict[str, int | None], *, shuffle_seed: int = 0) -> None:
        self.files = files
        self.seed = shuffle_seed
        self.calls: list[str] = []

    def glob(self, pattern: str) -> Iterable[str | FileInfo]:
        self.calls.append(pattern)
        found = [
            FileInfo(path, size)
            for path, size in self.files.items()
            if fnmatch.fnmatchcase(path, pattern)
        ]
        random.Random(self.seed).shuffle(found)
        return found


class FakeManifests:
    """A ManifestReader over in-memory text; yields lines with their endings, like a file."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def open(self, path: str) -> Iterator[str]:
        yield from self.files[path].splitlines(keepends=True)


def source(**raw) -> TaskSource:
    return TaskSource.model_validate(raw)


def params(tasks) -> list[dict]:
    return [t.params for t in tasks]


# ---------------------------------------------------------------------------------- sources
def test_items_map_index_to_each_item_in_order():
    tasks = expand(source(items=[{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]))
    assert len(tasks) == 2
    assert tasks.task(1) == Task(1, {"a": 2, "b": "y"})
    assert tasks.param_names == ("a", "b")


def test_range_yields_one_task_per_value_with_exclusive_stop():
    tasks = expand(source(range={"param": "shot", "start": 1, "stop": 10, "step": 3}))
    assert params(tasks) == [{"shot": 1}, {"shot": 4}, {"shot": 7}]


def test_negative_step_counts_down():
    tasks = expand(source(range={"start": 3, "stop": 0, "step": -1}))
    assert [t.params["value"] for t in tasks] == [3, 2, 1]


def test_huge_range_has_random_access_without_materialising():
    tasks = expand(source(range={"param": "n", "stop": 5_000_000}))
    assert len(tasks) == 5_000_000
    assert tasks.task(4_999_999).params == {"n": 4_999_999}


def test_matrix_axes_are_in_name_order_last_axis_fastest():
    tasks = expand(source(matrix={"z": {"values": ["z0", "z1"]}, "a": {"range": {"stop": 3}}}))
    assert tasks.param_names == ("a", "z")
    assert params(tasks) == [{"a": a, "z": z} for a in range(3) for z in ("z0", "z1")]


def test_matrix_with_file_axes_is_the_sorted_cartesian_product():
    files = FakeFiles({"/v/b.mp4": 1, "/v/a.mp4": 1, "/i/2.jpg": 1, "/i/1.jpg": 1, "/v/x.txt": 1})
    tasks = expand(
        source(matrix={"video": {"files": "/v/*.mp4"}, "image": {"files": "/i/*.jpg"}}),
        files=files,
    )
    assert params(tasks) == [
        {"image": "/i/1.jpg", "video": "/v/a.mp4"},
        {"image": "/i/1.jpg", "video": "/v/b.mp4"},
        {"image": "/i/2.jpg", "video": "/v/a.mp4"},
        {"image": "/i/2.jpg", "video": "/v/b.mp4"},
    ]
    assert tasks.path_params == {"image", "video"}


def test_files_source_sorts_matches_so_the_mapping_is_deterministic():
    catalogue = {f"/data/img/{n:03}.png": n for n in range(50)}
    first = expand(
        source(files={"glob": "/data/img/*.png"}), files=FakeFiles(catalogue, shuffle_seed=1)
    )
    second = expand(
        source(files={"glob": "/data/img/*.png"}), files=FakeFiles(catalogue, shuffle_seed=2)
    )
    assert params(first) == params(second)
    assert first.task(0).params == {"file": "/data/img/000.png"}
    assert first.fingerprint == second.fingerprint


def test_lister_may_return_plain_paths_and_duplicates():
    class PlainLister:
        def glob(self, pattern: str) -> list[str]:
            return ["/b", "/a", "/b"]

    tasks = expand(source(files={"glob": "/*", "param": "p"}), files=PlainLister())
    assert params(tasks) == [{"p": "/a"}, {"p": "/b"}]
    assert tasks.file_size(0, "p") is None


def test_glob_matching_nothing_names_the_glob_and_what_to_check():
    with pytest.raises(SpecError) as err:
        expand(source(files={"glob": "/data/missing/*.png"}), files=FakeFiles({}))
    assert str(err.value).startswith("spec.tasks.files.glob: the glob '/data/missing/*.png'")
    assert "mounted" in str(err.value)


def test_matrix_glob_matching_nothing_names_its_axis():
    with pytest.raises(SpecError, match=r"spec.tasks.matrix.video.files"):
        expand(source(matrix={"video": {"files": "/none/*"}}), files=FakeFiles({}))


def test_a_new_file_changes_the_fingerprint():
    catalogue = {"/d/a.png": 1, "/d/b.png": 1}
    before = expand(source(files={"glob": "/d/*"}), files=FakeFiles(catalogue))
    catalogue["/d/aa.png"] = 1
    after = expand(source(files={"glob": "/d/*"}), files=FakeFiles(catalogue))
    assert before.fingerprint != after.fingerprint


def test_too_many_tasks_through_a_files_axis_is_refused_with_advice():
    # values and range axes are refused by the model (and CEL); a files axis only once listed
    files = FakeFiles({"/v/a.mp4": 1, "/v/b.mp4": 1})
    matrix = {"a": {"range": {"stop": MAX_TASKS // 2 + 1}}, "v": {"files": "/v/*.mp4"}}
    with pytest.raises(SpecError, match=f"at most {MAX_TASKS}.*split it"):
        expand(source(matrix=matrix), files=files)


def test_task_index_out_of_range_raises_index_error():
    with pytest.raises(IndexError):
        expand(source(range={"stop": 3})).task(3)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,3}", fullmatch=True),
        st.lists(st.integers(0, 9), min_size=1, max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_random_access_agrees_with_iteration_and_with_a_product(axes):
    tasks = expand(source(matrix={name: {"values": v} for name, v in axes.items()}))
    listed = list(tasks)
    assert [tasks.task(i) for i in range(len(tasks))] == listed
    names = sorted(axes)
    expected = [{}]
    for name in names:
        expected = [{**row, name: v} for row in expected for v in axes[name]]
    assert params(listed) == expected


# -------------------------------------------------------------------------------- manifests
def test_jsonl_manifest_lines_are_tasks_in_file_order_blank_lines_ignored():
    text = '{"sample": "s1", "steps": 5}\n\n{"steps": 7, "sample": "s2"}\n'
    tasks = expand(
        source(manifest={"path": "/m/x.jsonl"}), manifests=FakeManifests({"/m/x.jsonl": text})
    )
    assert params(tasks) == [{"sample": "s1", "steps": 5}, {"sample": "s2", "steps": 7}]
    assert set(tasks.param_names) == {"sample", "steps"}


def test_jsonl_keeps_floats_and_booleans():
    text = '{"lr": 0.001, "flag": true}\n'
    tasks = expand(
        source(manifest={"path": "/m.jsonl"}), manifests=FakeManifests({"/m.jsonl": text})
    )
    assert tasks.task(0).params == {"lr": 0.001, "flag": True}


def test_csv_manifest_uses_the_header_as_parameter_names():
    text = 'image,cost\n/i/a.png,3\n"/i/b,c.png",10\n'
    tasks = expand(
        source(manifest={"path": "/m/list.csv"}), manifests=FakeManifests({"/m/list.csv": text})
    )
    assert params(tasks) == [
        {"image": "/i/a.png", "cost": "3"},
        {"image": "/i/b,c.png", "cost": "10"},
    ]


def test_csv_field_spanning_lines_is_one_record():
    text = 'note,n\n"two\nlines",1\n'
    tasks = expand(source(manifest={"path": "/m.csv"}), manifests=FakeManifests({"/m.csv": text}))
    assert params(tasks) == [{"note": "two\nlines", "n": "1"}]


def test_large_manifest_is_stored_compactly_and_randomly_accessible():
    lines = "".join(json.dumps({"id": f"s{i:06}", "n": i}) + "\n" for i in range(100_000))
    tasks = expand(
        source(manifest={"path": "/big.jsonl"}), manifests=FakeManifests({"/big.jsonl": lines})
    )
    assert len(tasks) == 100_000
    assert tasks.task(99_999).params == {"id": "s099999", "n": 99_999}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}\nnot json\n', r"/m.jsonl line 2 is not valid JSON"),
        ("[1, 2]\n", r"line 1: each line must be a JSON object"),
        ('{"a": 1}\n{"b": 1}\n', r"line 2 has parameters \['b'\], but the first line has \['a'\]"),
        ('{"a": {"x": 1}}\n', r"parameter 'a' is .*must be strings, numbers or booleans"),
        ('{"a": null}\n', r"parameter 'a' is null"),
        ('{"index": 1}\n', r"'index' cannot be a parameter name"),
        ('{"a": NaN}\n', r"not valid JSON"),
        ("\n\n", r"lists no tasks"),
    ],
)
def test_bad_jsonl_manifest_is_refused_naming_the_line(text, expected):
    with pytest.raises(SpecError, match=expected) as err:
        expand(source(manifest={"path": "/m.jsonl"}), manifests=FakeManifests({"/m.jsonl": text}))
    assert str(err.value).startswith("spec.tasks.manifest: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n3\n", r"line 3 has 1 fields, but the header has 2"),
        ("a,a\n1,2\n", r"parameter names repeat"),
        ("my-col\n1\n", r"'my-col' cannot be a parameter name"),
        ('a\n"unterminated\n', r"is not valid CSV"),
        ("a,b\n", r"lists no tasks"),
    ],
)
def test_bad_csv_manifest_is_refused_naming_the_line(text, expected):
    with pytest.raises(SpecError, match=expected):
        expand(source(manifest={"path": "/m.csv"}), manifests=FakeManifests({"/m.csv": text}))


def test_manifest_format_may_be_given_for_an_unusual_extension():
    tasks = expand(
        source(manifest={"path": "/m/tasks.txt", "format": "csv"}),
        manifests=FakeManifests({"/m/tasks.txt": "x\n1\n"}),
    )
    assert params(tasks) == [{"x": "1"}]


def test_edited_manifest_changes_the_fingerprint():
    src = source(manifest={"path": "/m.jsonl"})
    one = expand(src, manifests=FakeManifests({"/m.jsonl": '{"a": 1}\n'}))
    two = expand(src, manifests=FakeManifests({"/m.jsonl": '{"a": 2}\n'}))
    assert one.fingerprint != two.fingerprint


# ------------------------------------------------------------------------------------ order
def test_index_order_is_a_plain_range():
    tasks = expand(source(range={"stop": 4}))
    assert list(dispatch_order(Order(), tasks)) == [0, 1, 2, 3]


def test_longest_first_orders_by_cost_descending_ties_by_index():
    tasks = expand(source(items=[{"c": 1}, {"c": 5}, {"c": "5"}, {"c": 3}]))
    order = dispatch_order(Order(by="longestFirst", cost_param="c"), tasks)
    assert list(order) == [1, 2, 3, 0]


def test_longest_first_by_a_file_parameter_uses_file_size():
    files = FakeFiles({"/i/a.png": 10, "/i/b.png": 300, "/i/c.png": 20})
    tasks = expand(source(files={"glob": "/i/*.png", "param": "image"}), files=files)
    order = dispatch_order(Order(by="longestFirst", cost_param="image"), tasks)
    assert [tasks.task(i).params["image"] for i in order] == ["/i/b.png", "/i/c.png", "/i/a.png"]


def test_cost_param_that_is_not_a_parameter_is_refused():
    tasks = expand(source(range={"param": "shot", "stop": 3}))
    with pytest.raises(SpecError, match=r"costParam 'size' is not a parameter.*shot"):
        dispatch_order(Order(by="longestFirst", cost_param="size"), tasks)


def test_non_numeric_cost_fails_naming_the_task():
    tasks = expand(source(items=[{"c": "1"}, {"c": "big"}]))
    with pytest.raises(TaskSpecError, match="task 1: costParam 'c' is 'big', not a finite number"):
        dispatch_order(Order(by="longestFirst", cost_param="c"), tasks)


def test_file_cost_without_sizes_from_storage_is_refused_with_alternative():
    class PlainLister:
        def glob(self, pattern: str) -> list[str]:
            return ["/a", "/b"]

    tasks = expand(source(files={"glob": "/*", "param": "f"}), files=PlainLister())
    with pytest.raises(SpecError, match="did not report file sizes; use a numeric parameter"):
        dispatch_order(Order(by="longestFirst", cost_param="f"), tasks)


# ---------------------------------------------------------------------------------- prepare
def batch(**raw) -> dict:
    return {
        "tasks": {"files": {"glob": "/in/*.png", "param": "img"}},
        "outputs": ["/out/{img.stem}.obj"],
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "t",
                        "image": "registry.example.com/t:1",
                        "command": ["convert"],
                        "args": ["{img}", "{outputs[0]}"],
                    }
                ]
            }
        },
        **raw,
    }


def test_prepare_batch_expands_renders_and_orders():
    files = FakeFiles({"/in/b.png": 5, "/in/a.png": 9})
    prepared = prepare_batch(batch(order={"by": "longestFirst", "costParam": "img"}), files=files)
    assert prepared.tasks.count() == 2
    assert list(prepared.order()) == [0, 1]  # a.png (9 bytes) sorts first and is biggest
    rendered = prepared.render(1)
    assert rendered.args == ("/in/b.png", "/out/b.obj")
    assert files.calls == ["/in/*.png"]  # globbed once per batch, not per task


def test_prepare_batch_reports_every_model_problem_at_once():
    raw = batch(parallelism=0, retry={"backoffSeconds": 100, "maxBackoffSeconds": 10})
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    message = str(err.value)
    assert "spec.parallelism: Input should be greater than or equal to 1" in message
    assert "spec.retry: maxBackoffSeconds must be at least backoffSeconds" in message


def test_prepare_batch_refuses_a_bad_placeholder_before_expanding_any_task():
    raw = batch(outputs=["/out/{image.stem}.obj"])
    with pytest.raises(
        SpecError, match=r"spec.outputs\[0\]: unknown placeholder {image}.*did you mean {img}"
    ):
        prepare_batch(raw, files=FakeFiles({"/in/a.png": 1}))


def test_prepared_examples_spec_model_is_reused_not_reparsed():
    spec = GPUBatchSpec.model_validate(batch())
    prepared = prepare_batch(spec, files=FakeFiles({"/in/a.png": 1}))
    assert prepared.spec is spec
