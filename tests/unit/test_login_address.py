"""The operator's in-cluster login uses the address the kubelet gives the pod, not a DNS name."""

from __future__ import annotations

import kopf
import pytest

from gpubatch.controller.handlers import in_cluster_address

pytestmark = pytest.mark.unit

SERVICE_ACCOUNT = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t")


def test_the_pods_service_host_and_port_replace_kopfs_fixed_dns_name():
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    info = in_cluster_address(SERVICE_ACCOUNT, environ)

    assert info.server == "https://10.96.0.1:443"
    assert info.token == "t"


def test_an_ipv6_service_host_is_bracketed():
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}

    assert in_cluster_address(SERVICE_ACCOUNT, environ).server == "https://[fd00::1]:6443"


def test_without_the_variables_kopfs_address_stays():
    assert in_cluster_address(SERVICE_ACCOUNT, {}).server == "https://kubernetes.default.svc"
