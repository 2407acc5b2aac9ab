"""docs/hostile-specs.md is the table generated from the hostile-spec corpus, and the corpus is
consistent with the pydantic models (the local CLI refuses what the API server refuses).

The corpus itself is proven on the test bed by tests/integration/test_hostile_specs.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpubatch.controller.taskload import load_tasks
from gpubatch.core.errors import SpecError
from gpubatch.core.prepare import parse_spec
from integration.hostile_specs import (
    CASES,
    DOC,
    FAILED,
    FAILED_CASES,
    REFUSED,
    REFUSED_CASES,
    Case,
    markdown,
)

pytestmark = pytest.mark.unit


def test_the_doc_is_the_table_generated_from_the_corpus():
    assert DOC.read_text() == markdown(), (
        "docs/hostile-specs.md is out of date: cd tests && ../.venv/bin/python -m "
        "integration.hostile_specs"
    )


def test_the_doc_lists_every_case_with_its_expectation():
    doc = DOC.read_text()
    for case in CASES:
        assert re.search(rf"^\| \d+ \| `{re.escape(case.id)}` \|", doc, re.MULTILINE), case.id


def test_the_corpus_is_large_and_well_formed():
    assert len(CASES) >= 35
    assert REFUSED_CASES and FAILED_CASES
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        # The id is the GPUBatch's name, and its pods are <id>-<index>-<attempt>.
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", case.id), case.id
        assert len(case.id) <= 40, case.id
        assert case.expect in (REFUSED, FAILED)
        assert case.message.strip() and case.what.strip()
        assert (case.reason is not None) == (case.expect == FAILED), case.id


@pytest.mark.parametrize("case", REFUSED_CASES, ids=lambda c: c.id)
def test_what_the_api_server_refuses_the_models_refuse_too(case: Case):
    with pytest.raises(SpecError):
        parse_spec(case.spec())


@pytest.mark.parametrize("case", FAILED_CASES, ids=lambda c: c.id)
def test_what_the_operator_fails_it_fails_locally_with_the_same_message(case: Case, tmp_path: Path):
    spec = case.body(tmp_path)["spec"]
    parse_spec(spec)  # valid as far as the models (and the CRD) can tell
    error = load_tasks(spec, generation=1).error  # what the operator does before any pod
    assert error is not None
    assert case.message in error
