"""The operator's lease endpoint on a test bed: a serving certificate from the test bed's CA and
the --lease-* flags, shared by the test suite's operator and `python -m testbed demo`."""

from __future__ import annotations

from pathlib import Path

from gpubatch.api.lease import LEASE_PATH
from testbed.certs import CertPaths, serving_certificate


def lease_url(port: int, host: str = "127.0.0.1") -> str:
    """What warm pods are told (GPUBATCH_LEASE_URL): the lease endpoint on loopback, or on
    `host` (the real node's pod gateway, which pods in real containers can reach)."""
    return f"https://{host}:{port}{LEASE_PATH}"


def lease_flags(certs: CertPaths, folder: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The operator's --lease-* flags on `host`:`port`, with a certificate for that address,
    127.0.0.1 and localhost made once in `folder` per address; pods verify it with the test
    bed's CA (`certs.ca_cert`)."""
    name = "operator-lease" if host == "127.0.0.1" else f"operator-lease-{host}"
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    if not cert.exists():
        ips = tuple(dict.fromkeys(("127.0.0.1", host)))
        cert, key = serving_certificate(certs, folder, name, ips=ips)
    return [
        f"--lease-port={port}",
        f"--lease-host={host}",
        f"--lease-cert={cert}",
        f"--lease-key={key}",
        f"--lease-ca={certs.ca_cert}",
        f"--lease-url={lease_url(port, host)}",
    ]
