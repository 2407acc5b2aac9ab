"""The test bed's pure parts for MultiKueue: which processes a control-plane-only bed runs, and
a kubeconfig that carries its certificates inside (Kueue's MultiKueue refuses file paths)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from testbed import TestbedConfig
from testbed.certs import generate, write_kubeconfig

pytestmark = pytest.mark.unit


def test_a_control_plane_only_bed_runs_no_scheduler_and_no_kwok():
    assert TestbedConfig(control_plane_only=True).components() == (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    )
    assert TestbedConfig().components()[-2:] == ("kube-scheduler", "kwok")


def test_a_control_plane_only_bed_with_a_real_node_is_refused_saying_what_to_change():
    with pytest.raises(ValueError, match="set real_node=False or control_plane_only=False"):
        TestbedConfig(control_plane_only=True, real_node=True)


def test_an_embedded_kubeconfig_carries_the_files_and_names_none(tmp_path: Path):
    certs = generate(tmp_path / "pki")
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, "https://127.0.0.1:6443", certs, embed=True)
    config = yaml.safe_load(path.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    assert set(cluster) == {"server", "certificate-authority-data"}
    assert set(user) == {"client-certificate-data", "client-key-data"}
    assert base64.b64decode(cluster["certificate-authority-data"]) == certs.ca_cert.read_bytes()
    assert base64.b64decode(user["client-certificate-data"]) == certs.admin_cert.read_bytes()
    assert base64.b64decode(user["client-key-data"]) == certs.admin_key.read_bytes()


def test_a_plain_kubeconfig_names_the_files(tmp_path: Path):
    certs = generate(tmp_path / "pki")
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, "https://127.0.0.1:6443", certs)
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["certificate-authority"] == str(certs.ca_cert)
    assert config["users"][0]["user"] == {
        "client-certificate": str(certs.admin_cert),
        "client-key": str(certs.admin_key),
    }
