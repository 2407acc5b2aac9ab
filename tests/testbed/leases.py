"""The operator's lease endpoint on a test bed: a serving certificate from the test bed's CA and
the --lease-* flags, shared by the test suite's operator and `python -m testbed demo`."""

from __future__ import annotations

from pathlib import Path

from gpubatch.api.lease import LEASE_PATH
from testbed.certs import CertPaths, serving_certificate


def lease_url(port: int) -> str:
    """What warm pods are told (GPUBATCH_LEASE_URL): the lease endpoint on loopback."""
    return f"https://127.0.0.1:{port}{LEASE_PATH}"


def lease_flags(certs: CertPaths, folder: Path, port: int) -> list[str]:
    """The operator's --lease-* flags on `port`, with a certificate for 127.0.0.1 and
    localhost made once in `folder`; pods verify it with the test bed's CA (`certs.ca_cert`)."""
    cert, key = folder / "operator-lease.crt", folder / "operator-lease.key"
    if not cert.exists():
        cert, key = serving_certificate(certs, folder, "operator-lease")
    return [
        f"--lease-port={port}",
        "--lease-host=127.0.0.1",
        f"--lease-cert={cert}",
        f"--lease-key={key}",
        f"--lease-ca={certs.ca_cert}",
        f"--lease-url={lease_url(port)}",
    ]
