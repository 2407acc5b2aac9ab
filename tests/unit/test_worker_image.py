"""The worker image's files: its docs cannot drift from the code, its build steps work.

No Docker engine exists here, so the image is not built; what its RUN steps execute (the
requirements script, the worker itself with only the worker extra's packages) is tested instead,
here and in test_worker.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gpubatch.api.result import exit_code_table_markdown
from gpubatch.api.taskenv import env_table_markdown

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "worker-image"
REGENERATE = (
    "regenerate it with: .venv/bin/python -c 'from gpubatch.api.{module} import {function}; "
    "print({function}())'"
)


def section(name: str) -> str:
    text = (IMAGE / "README.md").read_text()
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"worker-image/README.md lacks the {name} markers"
    return match.group(1)


def worker_extra() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        extras: list[str] = tomllib.load(handle)["project"]["optional-dependencies"]["worker"]
    return extras


def requirements_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(IMAGE / "requirements_from_extras.py"), *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_readme_exit_code_table_is_the_one_in_the_code() -> None:
    assert section("exit-codes") == exit_code_table_markdown(), REGENERATE.format(
        module="result", function="exit_code_table_markdown"
    )


def test_readme_environment_table_is_the_one_in_the_code() -> None:
    assert section("env-table") == env_table_markdown(), REGENERATE.format(
        module="taskenv", function="env_table_markdown"
    )


def test_readme_lean_install_lists_exactly_the_worker_extra() -> None:
    quoted = re.findall(r'"([^"]+)"', section("worker-requirements"))
    assert quoted == worker_extra()


def test_requirements_script_prints_the_worker_extra() -> None:
    done = requirements_script(str(ROOT / "pyproject.toml"), "worker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == worker_extra()


def test_requirements_script_merges_extras_without_duplicates() -> None:
    done = requirements_script(str(ROOT / "pyproject.toml"), "worker,s3,worker")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[: len(worker_extra())] == worker_extra()
    assert any(line.startswith("s3fs") for line in lines)
    assert len(lines) == len(set(lines))


def test_requirements_script_refuses_an_unknown_extra() -> None:
    done = requirements_script(str(ROOT / "pyproject.toml"), "worker,gpu-magic")
    assert done.returncode != 0
    assert "unknown extra 'gpu-magic'" in done.stderr


def test_dockerfile_is_multi_stage_on_a_base_image_argument_and_runs_as_non_root() -> None:
    dockerfile = (IMAGE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", dockerfile, re.MULTILINE)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", dockerfile, re.MULTILINE)) == 2
    assert "COPY --from=build /opt/gpubatch /opt/gpubatch" in dockerfile
    assert re.search(r"^USER 65532:65532$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["gpubatch-worker"]' in dockerfile
    assert "pip uninstall -y pip setuptools" in dockerfile


def test_dockerignore_sends_every_path_the_dockerfile_copies() -> None:
    dockerfile = (IMAGE / "Dockerfile").read_text()
    ignore = (IMAGE / "Dockerfile.dockerignore").read_text().split()
    sources = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert f"!{source.rstrip('/')}" in ignore, source
        assert (ROOT / source).exists(), source
