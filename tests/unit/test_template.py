"""The placeholder grammar: what renders, and what is refused with a message saying what to do."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import Task
from gpubatch.core.taskrender import TaskRenderer
from gpubatch.core.template import Index, Output, Param, Template, format_value, path_part

pytestmark = pytest.mark.unit


def render(text: str, params=None, *, index: int = 0, outputs=()) -> str:
    template = Template.parse(text, where="test")
    template.check(set(params or {}), outputs=len(outputs))
    return template.render(params or {}, index=index, outputs=outputs)


# ---------------------------------------------------------------------------- rendering
def test_parameter_placeholder_is_replaced_by_its_value():
    assert render("--vid {video}", {"video": "/v/a.mp4"}) == "--vid /v/a.mp4"


@pytest.mark.parametrize(
    ("part", "expected"),
    [("stem", "clip.final"), ("name", "clip.final.mp4"), ("parent", "/data/v"), ("suffix", ".mp4")],
)
def test_path_parts_of_a_file_parameter(part, expected):
    assert render(f"{{f.{part}}}", {"f": "/data/v/clip.final.mp4"}) == expected


def test_parent_of_a_url_keeps_the_scheme():
    assert path_part("s3://bucket/dir/a.png", "parent") == "s3://bucket/dir"
    assert path_part("s3://bucket/dir/a.png", "stem") == "a"


def test_index_and_outputs_placeholders():
    assert render("{index}:{outputs[1]}", index=7, outputs=["/a", "/b"]) == "7:/b"


def test_doubled_braces_are_literal_braces():
    assert render("{{x}} {x} }}{{", {"x": "1"}) == "{x} 1 }{"


def test_values_render_as_written_booleans_lowercase_floats_shortest():
    assert [format_value(v) for v in ("a", 5, 0.1, True, False)] == [
        "a",
        "5",
        "0.1",
        "true",
        "false",
    ]


def test_quote_function_wraps_each_substitution_only():
    template = Template.parse("cat {f} > out", where="t")
    rendered = template.render({"f": "a b;rm -rf /"}, index=0, quote=shlex.quote)
    assert rendered == "cat 'a b;rm -rf /' > out"


def test_parse_produces_segments():
    template = Template.parse("a{x.stem}b{index}{outputs[0]}", where="t")
    assert template.segments == ("a", Param("x", "stem"), "b", Index(), Output(0))


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40))
def test_text_without_braces_renders_unchanged(text):
    assert render(text) == text


@given(st.text(max_size=40))
def test_escaped_text_renders_back_to_itself(text):
    escaped = text.replace("{", "{{").replace("}", "}}")
    assert render(escaped) == text


# ----------------------------------------------------------------------------- refusals
def test_unknown_placeholder_names_the_placeholder_and_suggests_the_close_one():
    template = Template.parse("{vidoe}", where="spec.outputs[0]")
    with pytest.raises(SpecError) as err:
        template.check({"video", "image"}, outputs=None)
    message = str(err.value)
    assert "unknown placeholder {vidoe}" in message
    assert "did you mean {video}?" in message
    assert message.startswith("spec.outputs[0]: ")
    assert "image, video" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{x.__class__}", "unknown part '__class__'"),
        ("{x.upper}", "unknown part 'upper'"),
        ("{x[0]}", "indexing is only allowed as {outputs[N]}"),
        ("{x!r}", "is not a valid placeholder"),
        ("{x:>10}", "is not a valid placeholder"),
        ("{x.stem.name}", "is not a valid placeholder"),
        ("{}", "is not a valid placeholder"),
        ("{ x }", "is not a valid placeholder"),
        ("{0}", "is not a valid placeholder"),
        ("{outputs}", "refer to one output as {outputs[N]}"),
        ("{index.stem}", "{index} has no parts"),
        ("{x", "unclosed '{'"),
        ("a}b", "single '}'"),
        ("{a{b}}", "is not a valid placeholder"),
    ],
)
def test_syntax_outside_the_grammar_is_refused_with_a_hint(text, expected):
    with pytest.raises(SpecError) as err:
        Template.parse(text, where="t")
    assert expected in str(err.value)


def test_output_reference_beyond_the_outputs_names_how_many_there_are():
    template = Template.parse("{outputs[2]}", where="t")
    with pytest.raises(SpecError, match=r"spec.outputs has 2 entries \(indexes 0 to 1\)"):
        template.check(set(), outputs=2)


def test_output_reference_with_no_outputs_says_to_add_one():
    with pytest.raises(SpecError, match=r"spec\.outputs is empty"):
        Template.parse("{outputs[0]}", where="t").check(set(), outputs=0)


def test_outputs_cannot_refer_to_outputs():
    with pytest.raises(SpecError, match="an output path cannot refer to the outputs"):
        Template.parse("/o/{outputs[0]}", where="t").check(set(), outputs=None)


# ------------------------------------------------------------------------- TaskRenderer
def spec(**overrides) -> GPUBatchSpec:
    container = {
        "name": "task",
        "image": "registry.example.com/t:1",
        "command": ["python", "run.py", "{f}"],
        "args": ["--out", "{outputs[0]}", "--i", "{index}"],
        "env": [
            {"name": "SAMPLE", "value": "{f.stem}"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    }
    container.update(overrides.pop("container", {}))
    raw = {
        "tasks": {"files": {"glob": "/in/*.png", "param": "f"}},
        "outputs": ["/out/{f.stem}.obj"],
        "template": {"spec": {"containers": [container]}},
        **overrides,
    }
    return GPUBatchSpec.model_validate(raw)


def test_renderer_substitutes_command_args_env_and_outputs():
    renderer = TaskRenderer(spec(), ["f"])
    rendered = renderer.render(Task(3, {"f": "/in/face 1.png"}))
    assert rendered.outputs == ("/out/face 1.obj",)
    assert rendered.command == ("python", "run.py", "/in/face 1.png")
    assert rendered.args == ("--out", "/out/face 1.obj", "--i", "3")
    assert rendered.env_values == ("face 1", None)


def test_rendered_task_applies_to_a_copy_of_the_container():
    s = spec()
    container = s.template.spec.containers[0].model_dump()
    rendered = TaskRenderer(s, ["f"]).render(Task(0, {"f": "/in/a.png"}))
    result = rendered.apply(container)
    assert result["command"] == ["python", "run.py", "/in/a.png"]
    assert result["env"][0] == {"name": "SAMPLE", "value": "a"}
    assert "valueFrom" in result["env"][1]
    assert container["command"][2] == "{f}"  # the template itself is untouched


def test_shell_mode_quotes_substituted_values():
    s = spec(
        worker={"shell": True}, container={"command": ["convert {f} {outputs[0]}"], "args": None}
    )
    rendered = TaskRenderer(s, ["f"]).render(Task(0, {"f": "/in/x;reboot.png"}))
    assert rendered.command == ("convert '/in/x;reboot.png' '/out/x;reboot.obj'",)
    assert rendered.outputs == ("/out/x;reboot.obj",)


def test_unknown_placeholder_in_args_fails_before_any_task():
    bad = spec(container={"args": ["{file}"]})
    with pytest.raises(SpecError, match=r"containers\[0\].args\[0\]: unknown placeholder {file}"):
        TaskRenderer(bad, ["f"])


def test_unknown_placeholder_in_env_value_fails_before_any_task():
    bad = spec(container={"env": [{"name": "X", "value": "{nope}"}]})
    with pytest.raises(SpecError, match=r"env\[0\].value: unknown placeholder {nope}"):
        TaskRenderer(bad, ["f"])


def test_task_container_is_the_named_one_not_the_first():
    raw = spec().model_dump()
    sidecar = {"name": "sidecar", "image": "registry.example.com/s:1", "args": ["{unrelated}"]}
    raw["template"]["spec"]["containers"].insert(0, sidecar)
    raw["taskContainer"] = "task"
    renderer = TaskRenderer(GPUBatchSpec.model_validate(raw), ["f"])
    assert renderer.render(Task(0, {"f": "/in/a.png"})).command == ("python", "run.py", "/in/a.png")


@pytest.mark.parametrize("variable", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"])
def test_command_that_assigns_a_gpu_pinning_variable_is_refused(variable):
    bad = spec(container={"command": ["env", f"{variable}=0", "python", "run.py"]})
    with pytest.raises(SpecError, match="sets a GPU-pinning variable") as err:
        TaskRenderer(bad, ["f"])
    assert "remove the assignment" in str(err.value)


@pytest.mark.parametrize("variable", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"])
def test_a_parameter_value_that_assigns_a_gpu_pinning_variable_fails_that_task(variable):
    renderer = TaskRenderer(spec(container={"command": ["env", "{f}", "python", "run.py"]}), ["f"])
    assert renderer.render(Task(0, {"f": "MODE=fast"})).command == (
        "env",
        "MODE=fast",
        "python",
        "run.py",
    )
    with pytest.raises(TaskSpecError) as err:
        renderer.render(Task(1, {"f": f"{variable}=1"}))
    assert err.value.index == 1
    assert "sets a GPU-pinning variable" in str(err.value)
    assert "remove the assignment from the parameter values" in str(err.value)


def test_an_env_value_from_a_parameter_that_assigns_a_gpu_pinning_variable_fails_that_task():
    container = {"env": [{"name": "EXTRA_ARGS", "value": "--x {f}"}]}
    renderer = TaskRenderer(spec(container=container), ["f"])
    with pytest.raises(TaskSpecError, match="sets a GPU-pinning variable"):
        renderer.render(Task(0, {"f": "CUDA_VISIBLE_DEVICES=0"}))


def test_a_literal_env_value_that_assigns_a_gpu_pinning_variable_is_refused():
    container = {"env": [{"name": "LAUNCH", "value": "CUDA_VISIBLE_DEVICES=0 python"}]}
    with pytest.raises(SpecError, match="sets a GPU-pinning variable"):
        TaskRenderer(spec(container=container), ["f"])


def test_relative_outputs_resolve_inside_output_root():
    s = spec(outputRoot="/data/out/", outputs=["{f.stem}/mesh.obj"])
    assert TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "/in/a.png"})) == ("/data/out/a/mesh.obj",)


def test_url_output_root_keeps_the_scheme():
    s = spec(outputRoot="s3://bucket/run1", outputs=["{f.stem}.obj"])
    assert TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "/in/a.png"})) == (
        "s3://bucket/run1/a.obj",
    )


def test_output_escaping_root_through_a_parameter_value_fails_that_task_only():
    s = spec(outputRoot="/data/out", outputs=["{f}"])
    renderer = TaskRenderer(s, ["f"])
    with pytest.raises(TaskSpecError, match="outside outputRoot") as err:
        renderer.outputs(Task(4, {"f": "/etc/passwd"}))
    assert err.value.index == 4
    assert renderer.outputs(Task(5, {"f": "/data/out/x"})) == ("/data/out/x",)


def test_dotdot_in_a_rendered_output_is_refused():
    s = spec(outputRoot="/data/out", outputs=["{f}/x.obj"])
    with pytest.raises(TaskSpecError, match=r"'\.\.' segment"):
        TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "../../etc"}))


def test_literal_output_outside_the_root_fails_before_any_task():
    s = spec(outputRoot="/data/out", outputs=["/data/other/{f.stem}.obj"])
    with pytest.raises(SpecError, match="outside outputRoot") as err:
        TaskRenderer(s, ["f"])
    assert not isinstance(err.value, TaskSpecError)


def test_root_prefix_that_is_not_a_folder_boundary_does_not_count_as_inside():
    s = spec(outputRoot="/data/out", outputs=["{f}"])
    with pytest.raises(TaskSpecError, match="outside outputRoot"):
        TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "/data/outside/x"}))


def test_output_without_placeholders_in_a_multi_task_batch_is_refused():
    s = spec(outputs=["/out/result.txt"], container={"args": []})
    with pytest.raises(SpecError, match="no placeholders, so all 10 tasks"):
        TaskRenderer(s, ["f"], task_count=10)


def test_placeholder_led_output_must_render_absolute_without_root():
    s = spec(outputs=["{f.stem}.obj"])
    with pytest.raises(TaskSpecError, match="not an absolute path or URL"):
        TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "/in/a.png"}))


def test_duplicate_slashes_are_collapsed_in_outputs():
    s = spec(outputs=["/out//{f.stem}.obj"])
    assert TaskRenderer(s, ["f"]).outputs(Task(0, {"f": "/in/a.png"})) == ("/out/a.obj",)


@pytest.mark.parametrize("arg", ["'{p}'", '"{p}"', "--x='a {p}'", 'echo "{p}'])
def test_shell_mode_refuses_a_placeholder_inside_the_users_own_quotes(arg):
    from gpubatch.core.errors import SpecError
    from gpubatch.core.prepare import prepare_batch

    spec = {
        "tasks": {"items": [{"p": "; touch /tmp/x #"}]},
        "worker": {"shell": True},
        "template": {
            "spec": {
                "containers": [{"name": "t", "image": "i", "command": ["python", "t.py", arg]}]
            }
        },
    }
    with pytest.raises(SpecError, match="inside"):
        prepare_batch(spec)


def test_shell_mode_allows_quotes_that_close_before_the_placeholder():
    import shlex

    from gpubatch.core.prepare import prepare_batch

    spec = {
        "tasks": {"items": [{"p": "; touch /tmp/x #"}]},
        "worker": {"shell": True},
        "template": {
            "spec": {
                "containers": [{"name": "t", "image": "i", "command": ["echo", "'a b'", "{p}"]}]
            }
        },
    }
    rendered = prepare_batch(spec).render(0)
    assert shlex.split(" ".join(rendered.command or ())) == ["echo", "a b", "; touch /tmp/x #"]
