"""The chart's CRD is the canonical one, byte for byte: crds/ is the source, the chart a copy."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CANONICAL = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "gpubatch-operator" / "crds"


def test_chart_crd_folder_holds_exactly_the_canonical_crds():
    assert sorted(p.name for p in CHART_CRDS.iterdir()) == sorted(
        p.name for p in CANONICAL.glob("*.yaml")
    )


def test_chart_crd_is_byte_identical_to_the_canonical_one():
    for canonical in CANONICAL.glob("*.yaml"):
        copy = CHART_CRDS / canonical.name
        assert copy.read_bytes() == canonical.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {canonical.relative_to(ROOT)}; "
            "run `make chart-crd-sync`"
        )
