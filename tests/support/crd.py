"""The GPUBatch CRD of this checkout, installed on a test bed."""

from __future__ import annotations

from pathlib import Path

from gpubatch.api.names import GROUP, PLURAL
from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"


def install_crd(testbed: Testbed, *, force_conflicts: bool = False) -> Path:
    """Apply the CRD (server-side) and wait until the API server serves it.

    `force_conflicts` takes over fields another manager set, for a test that must re-apply
    this checkout's CRD over one installed earlier (by the chart, say)."""
    force = ["--force-conflicts"] if force_conflicts else []
    testbed.kubectl("apply", "--server-side", *force, "-f", str(CRD))
    testbed.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    return CRD
