"""The operator image (operator/Dockerfile) and the chart agree with each other and with the code.

No Docker engine exists here, so the image is not built (`make e2e-kind` builds it where Docker
exists); what can drift without a build is checked instead.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from gpubatch.controller.main import parse_args

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "operator" / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
CHART = ROOT / "charts" / "gpubatch-operator"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_image_runs_the_operator_console_script():
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', DOCKERFILE, re.M)
    assert entrypoint and entrypoint.group(1) == "gpubatch-operator"
    assert PYPROJECT["project"]["scripts"]["gpubatch-operator"] == "gpubatch.controller.main:main"


def test_image_user_is_the_charts_non_root_user():
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert user, "USER must be numeric so the kubelet can check runAsNonRoot"
    assert int(user.group(1)) == VALUES["podSecurityContext"]["runAsUser"]
    assert int(user.group(2)) == VALUES["podSecurityContext"]["runAsGroup"]


def test_chart_ports_are_the_operators_defaults():
    defaults = parse_args([])
    assert VALUES["metrics"]["port"] == defaults.metrics_port
    assert defaults.liveness == f"http://0.0.0.0:{VALUES['healthPort']}/healthz"


def test_build_context_keeps_what_the_dockerfile_copies():
    copied = [
        source
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M)
        for source in line.split()
    ]
    kept = {line[1:] for line in DOCKERIGNORE if line.startswith("!")}
    first_rule = next(line for line in DOCKERIGNORE if not line.startswith("#"))
    assert first_rule == "*", "the context must start from nothing and add what COPY needs"
    assert set(copied) <= kept, f"not sent to the build: {set(copied) - kept}"


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
