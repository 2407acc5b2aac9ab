"""Certificates and kubeconfig for a loopback-only control plane.

kube-apiserver refuses to serve without TLS and needs a service-account key pair; clients
authenticate with a client certificate in `system:masters`. Everything is generated fresh per test
bed so two test beds never share trust.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertPaths:
    """Where the generated material lives inside the test bed folder."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    sa_key: Path
    sa_pub: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def generate(folder: Path, extra_ips: tuple[str, ...] = ()) -> CertPaths:
    """Create a CA, an apiserver serving cert for loopback (and `extra_ips`, e.g. where pods of a
    real node reach it), an admin client cert, and SA keys."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=30)

    ca_key = _key()
    ca_name = _name("gpubatch-testbed-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, org: str | None, server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes"),
                        x509.DNSName("kubernetes.default"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    serving_cert, serving_key = leaf("kube-apiserver", None, server=True)
    admin_cert, admin_key = leaf("testbed-admin", "system:masters", server=False)
    # The API server's identity towards kubelets (logs, exec, port-forward on a real node).
    kubelet_client, kubelet_client_key = leaf(
        "kube-apiserver-kubelet-client", "system:masters", server=False
    )
    sa_key = _key()

    paths = CertPaths(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        admin_cert=folder / "admin.crt",
        admin_key=folder / "admin.key",
        kubelet_client_cert=folder / "apiserver-kubelet-client.crt",
        kubelet_client_key=folder / "apiserver-kubelet-client.key",
        sa_key=folder / "sa.key",
        sa_pub=folder / "sa.pub",
    )
    pem = serialization.Encoding.PEM
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    _write_key(ca_key, paths.ca_key)
    paths.serving_cert.write_bytes(serving_cert.public_bytes(pem))
    _write_key(serving_key, paths.serving_key)
    paths.admin_cert.write_bytes(admin_cert.public_bytes(pem))
    _write_key(admin_key, paths.admin_key)
    paths.kubelet_client_cert.write_bytes(kubelet_client.public_bytes(pem))
    _write_key(kubelet_client_key, paths.kubelet_client_key)
    _write_key(sa_key, paths.sa_key)
    paths.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return paths


def client_certificate(
    certs: CertPaths, folder: Path, user: str, groups: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A client certificate for `user` (CN) in `groups` (O), signed by the test bed's CA.

    Lets a test or benchmark give one client its own identity, e.g. to count its requests in
    the audit log or to check RBAC.
    """
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = _key()
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{user}.crt", folder / f"{user}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def write_kubeconfig(
    path: Path,
    server: str,
    certs: CertPaths,
    user: str = "testbed-admin",
    client: tuple[Path, Path] | None = None,
    *,
    embed: bool = False,
) -> None:
    """A kubeconfig that points at `server` with the admin client certificate: by absolute
    paths, or with `embed` the certificates and key themselves (base64 `*-data` fields), for a
    reader on whose side those paths mean nothing (Kueue's MultiKueue refuses file paths)."""
    cert, key = client or (certs.admin_cert, certs.admin_key)
    files = {"certificate-authority": certs.ca_cert}
    credentials = {"client-certificate": cert, "client-key": key}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "gpubatch-testbed", "cluster": {"server": server, **_refs(files, embed)}}
        ],
        "users": [{"name": user, "user": _refs(credentials, embed)}],
        "contexts": [
            {
                "name": "gpubatch-testbed",
                "context": {"cluster": "gpubatch-testbed", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "gpubatch-testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _refs(files: dict[str, Path], embed: bool) -> dict[str, str]:
    """kubeconfig fields naming `files`: `field: path`, or embedded `field-data: base64`."""
    if embed:
        return {
            f"{name}-data": base64.b64encode(p.read_bytes()).decode() for name, p in files.items()
        }
    return {name: str(p) for name, p in files.items()}


def serving_certificate(
    certs: CertPaths,
    folder: Path,
    name: str,
    dns_names: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
) -> tuple[Path, Path]:
    """A TLS serving certificate for `name` (its SANs: `dns_names` and `ips`), signed by the
    test bed's CA, so clients that trust the test bed (e.g. warm pods given `ca.crt`) trust
    the server: the operator's lease endpoint gets one."""
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = _key()
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path
