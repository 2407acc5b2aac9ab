"""`gpubatch validate` and `gpubatch expand`: offline checks and previews of a batch file.

Batch files are written as YAML text, the way users write them, and the commands are called
through `main()` as the console script would call them.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from gpubatch.api.spec import MSG_STEP_ZERO
from gpubatch.cli.main import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "batch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def shots_batch(tmp_path: Path, *, step: int = 1, extra: str = "") -> Path:
    out = tmp_path / "out"
    return write(
        tmp_path,
        f"""\
        apiVersion: gpubatch.io/v1alpha1
        kind: GPUBatch
        metadata: {{name: shots}}
        spec:
          tasks:
            range: {{param: shot, start: 0, stop: 4, step: {step}}}
          outputRoot: {out}
          outputs: ["shot-{{shot}}.npy"]
          template:
            spec:
              containers:
              - name: model
                image: registry.example.com/model:1
                command: [python, model.py, --shot, "{{shot}}", --out, "{{outputs[0]}}"]
        {textwrap.indent(textwrap.dedent(extra), "  ")}""",
    )


def test_validate_accepts_a_good_file_and_says_what_it_holds(tmp_path, capsys):
    assert main(["validate", str(shots_batch(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "valid GPUBatch shots: 4 tasks (parameters: shot)" in out


def test_validate_refuses_what_the_api_server_refuses_with_the_same_message(tmp_path, capsys):
    assert main(["validate", str(shots_batch(tmp_path, step=0))]) == 2
    err = capsys.readouterr().err
    assert "spec.tasks.range" in err and MSG_STEP_ZERO in err


def test_validate_refuses_a_file_without_a_name_or_with_the_wrong_kind(tmp_path, capsys):
    path = write(
        tmp_path,
        """\
        apiVersion: gpubatch.io/v1alpha1
        kind: Job
        spec: {}
        """,
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kind must be GPUBatch" in err and "metadata.name is required" in err


def test_validate_points_at_a_misspelt_placeholder_before_anything_runs(tmp_path, capsys):
    path = shots_batch(tmp_path)
    path.write_text(path.read_text().replace('"{shot}", --out', '"{shto}", --out'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown placeholder {shto}" in err and "did you mean {shot}" in err


def test_validate_refuses_a_wrapped_task_container_without_a_command(tmp_path, capsys):
    path = shots_batch(tmp_path)
    text = path.read_text().replace(
        'command: [python, model.py, --shot, "{shot}", --out, "{outputs[0]}"]',
        'env: [{name: SHOT, value: "{shot}"}]',
    )
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert "must set command" in capsys.readouterr().err


def test_validate_without_expanding_accepts_inputs_that_exist_only_on_the_cluster(tmp_path, capsys):
    path = write(
        tmp_path,
        """\
        apiVersion: gpubatch.io/v1alpha1
        kind: GPUBatch
        metadata: {name: frames}
        spec:
          tasks: {files: {glob: "/cluster-only/frames/*.png"}}
          outputs: ["/cluster-only/out/{file.stem}.json"]
          template:
            spec:
              containers: [{name: t, image: i, command: [detect, "{file}"]}]
        """,
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--no-expand" in err  # the hint for cluster-only inputs
    assert main(["validate", "--no-expand", str(path)]) == 0


def test_expand_lists_each_task_with_its_parameters_outputs_and_skip_state(tmp_path, capsys):
    path = shots_batch(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shot-2.npy").write_bytes(b"done")
    assert main(["expand", str(path), "--command"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "state", "params", "outputs", "command"]
    rows = {int(line.split()[0]): line.split() for line in lines[1:5]}
    assert rows[2][1] == "skip" and rows[0][1] == "run"
    assert rows[3][2] == "shot=3"
    assert rows[3][3] == f"{tmp_path}/out/shot-3.npy"
    assert rows[3][4:] == [
        "python",
        "model.py",
        "--shot",
        "3",
        "--out",
        f"{tmp_path}/out/shot-3.npy",
    ]
    assert "4 tasks (parameters: shot); 1 would be skipped" in lines[-1]


def test_expand_json_gives_one_object_per_task(tmp_path, capsys):
    assert main(["expand", str(shots_batch(tmp_path)), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["params"] == {"shot": 1}
    assert rows[1]["command"][-1] == f"{tmp_path}/out/shot-1.npy"


def test_expand_limits_long_listings_and_says_how_many_are_left(tmp_path, capsys):
    assert main(["expand", str(shots_batch(tmp_path)), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "... 3 more task(s) not listed" in out


def test_expand_marks_a_task_whose_output_escapes_the_output_root_as_invalid(tmp_path, capsys):
    path = write(
        tmp_path,
        f"""\
        apiVersion: gpubatch.io/v1alpha1
        kind: GPUBatch
        metadata: {{name: items}}
        spec:
          tasks:
            items: [{{where: ok}}, {{where: /etc}}]
          outputRoot: {tmp_path}/out
          outputs: ["{{where}}/result.txt"]
          template:
            spec:
              containers: [{{name: t, image: i, command: [run, "{{where}}"]}}]
        """,
    )
    assert main(["expand", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "invalid" in row and "outside outputRoot" in row
    assert "1 would run, 1 invalid" in out


def test_expand_reads_a_file_glob_on_this_machine(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("b.png", "a.png"):
        (tmp_path / "in" / name).write_bytes(b"x")
    path = write(
        tmp_path,
        f"""\
        apiVersion: gpubatch.io/v1alpha1
        kind: GPUBatch
        metadata: {{name: frames}}
        spec:
          tasks: {{files: {{glob: "{tmp_path}/in/*.png"}}}}
          outputs: ["{tmp_path}/out/{{file.stem}}.json"]
          template:
            spec:
              containers: [{{name: t, image: i, command: [detect, "{{file}}"]}}]
        """,
    )
    assert main(["expand", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["params"]["file"] for r in rows] == [f"{tmp_path}/in/a.png", f"{tmp_path}/in/b.png"]


def test_the_quickstart_example_is_valid_and_has_twelve_tasks(capsys):
    example = REPO / "examples" / "quickstart-local.yaml"
    assert main(["validate", str(example)]) == 0
    assert "valid GPUBatch quickstart: 12 tasks" in capsys.readouterr().out


def test_a_file_with_two_documents_is_refused(tmp_path, capsys):
    one = shots_batch(tmp_path).read_text()
    path = write(tmp_path, one + "\n---\n" + one, "two.yaml")
    assert main(["validate", str(path)]) == 2
    assert "found 2" in capsys.readouterr().err


def test_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["expand", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_submit_refuses_an_invalid_file_before_contacting_any_cluster(tmp_path, capsys):
    assert main(["submit", str(shots_batch(tmp_path, step=0))]) == 2
    assert MSG_STEP_ZERO in capsys.readouterr().err


def test_cluster_commands_without_a_kubeconfig_say_how_to_point_at_a_cluster(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["status", "shots"]) == 3
    err = capsys.readouterr().err
    assert "no cluster configured" in err and "gpubatch run FILE" in err


def test_validate_refuses_two_tasks_that_write_the_same_output(tmp_path, capsys):
    path = shots_batch(tmp_path)
    path.write_text(
        path.read_text().replace(
            "range: {param: shot, start: 0, stop: 4, step: 1}",
            "matrix: {shot: {range: {stop: 2}}, scale: {values: [a, b]}}",
        )
    )
    assert main(["validate", str(path)]) == 2
    assert "tasks 0 and 2 both write output" in capsys.readouterr().err


def test_validate_renders_every_task_and_refuses_tasks_whose_output_escapes(tmp_path, capsys):
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text('{"shot": "a"}\n{"shot": "../../etc/x"}\n')
    path = shots_batch(tmp_path)
    path.write_text(
        path.read_text().replace(
            "range: {param: shot, start: 0, stop: 4, step: 1}", f"manifest: {{path: {manifest}}}"
        )
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 task(s) cannot run and would fail without a pod, e.g. task 1:" in err
    assert "contains a '..' segment" in err
