"""The simulated warm worker fleet (tests/testbed/warmsim.py) on the real test bed: it finds a
warm pod once kwok runs it, gets a token bound to that pod (the TokenRequest API), asks for
leases over HTTPS with it, and ends the pod through kwok (sim.gpubatch.io/warm-exit).

The lease endpoint here is a small double that checks each token with a TokenReview for the
lease audience, as the operator does; the benchmarks run the fleet against the real operator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpubatch.api.lease import (
    ENV_BATCH_UID,
    ENV_LEASE_CA,
    ENV_LEASE_URL,
    LABEL_WARM_SLOT,
    LEASE_AUDIENCE,
    WarmProgress,
)
from support.leasedouble import LeaseDouble, served
from support.pods import gpu_pod
from support.waiting import wait_for
from testbed import Testbed, certs, sim
from testbed.warmsim import WarmFleet

pytestmark = pytest.mark.integration

HOLD = "sim.gpubatch.io/test-hold"  # a finalizer, so a deleted pod's last status can be read
BATCH_UID = "warmsim-test-batch"


def token_review(testbed: Testbed) -> Callable[[str], str | None]:
    """token -> the pod it is bound to, if the API server accepts it for the lease audience."""
    api = client.AuthenticationV1Api(testbed.api_client())

    def review(token: str) -> str | None:
        answer = api.create_token_review(
            client.V1TokenReview(
                spec=client.V1TokenReviewSpec(token=token, audiences=[LEASE_AUDIENCE])
            )
        )
        if not answer.status.authenticated:
            return None
        extra = answer.status.user.extra or {}
        return (extra.get("authentication.kubernetes.io/pod-name") or [None])[0]

    return review


def warm_pod(name: str, url: str, ca_pem: str, **annotations: str) -> dict[str, Any]:
    pod = gpu_pod(
        name,
        annotations=annotations,
        labels={LABEL_WARM_SLOT: "0"},
        node_selector={"gpubatch.io/testbed-pool": "gpu"},
    )
    pod["metadata"]["finalizers"] = [HOLD]
    pod["spec"]["containers"][0]["env"] = [
        {"name": ENV_LEASE_URL, "value": url},
        {"name": ENV_LEASE_CA, "value": ca_pem},
        {"name": ENV_BATCH_UID, "value": BATCH_UID},
    ]
    return pod


@pytest.fixture
def tls(tmp_path: Path) -> certs.CertPaths:
    return certs.generate(tmp_path / "tls")


@pytest.fixture
def fleet(testbed: Testbed) -> Iterator[WarmFleet]:
    with WarmFleet(testbed) as running:
        yield running


def ended(testbed: Testbed, namespace: str, name: str, timeout: float = 60) -> Any:
    api = testbed.core_v1()
    pod = wait_for(
        lambda: (
            (p := api.read_namespaced_pod(name, namespace)).status.phase in ("Succeeded", "Failed")
            and p
        ),
        timeout=timeout,
        what=f"pod {name} ended",
    )
    api.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})
    return pod


def test_fleet_runs_a_warm_pods_leases_with_its_bound_token_and_ends_it_on_done(
    testbed: Testbed, namespace: str, tls: certs.CertPaths, fleet: WarmFleet
):
    double = LeaseDouble(tasks=5, review=token_review(testbed))
    with served(double, tls) as url:
        testbed.core_v1().create_namespaced_pod(
            namespace, warm_pod("w", url, tls.ca_cert.read_text(), **{sim.DURATION: "50ms"})
        )
        pod = ended(testbed, namespace, "w")
    assert pod.status.phase == "Succeeded"
    assert double.pods == {"w"}  # the token was bound to the pod and meant for the lease audience
    assert double.results == {i: [0] for i in range(5)}
    assert fleet.log.acknowledged_successes(BATCH_UID) == dict.fromkeys(range(5), 1)
    message = pod.status.container_statuses[0].state.terminated.message
    assert WarmProgress.try_decode(message) is not None, message


def test_deleted_warm_pod_leaves_its_progress_and_its_worker_stops(
    testbed: Testbed, namespace: str, tls: certs.CertPaths, fleet: WarmFleet
):
    double = LeaseDouble(tasks=4, review=token_review(testbed))
    api = testbed.core_v1()
    with served(double, tls) as url:
        api.create_namespaced_pod(
            namespace, warm_pod("w", url, tls.ca_cert.read_text(), **{sim.DURATION: "10m"})
        )
        wait_for(lambda: double.seq >= 1, timeout=60, what="a lease handed out")
        api.delete_namespaced_pod("w", namespace)
        pod = ended(testbed, namespace, "w")
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert terminated.exit_code in (143, 137)  # 137: the 3 s grace ran out on a busy machine
    if terminated.exit_code == 143:
        progress = WarmProgress.try_decode(terminated.message)
        assert progress is not None, terminated.message
        assert [entry[:3] for entry in progress.done] == [(0, 0, 143)]
    runs = [(run.index, run.exit_code) for run in fleet.log.runs if run.batch_uid == BATCH_UID]
    assert runs == [(0, 143)]  # stopped mid-task: it failed Interrupted
    assert double.results == {0: [143]}  # reported once, with the rest of the lease unrun
    assert double.unrun == [(1, 0)]
