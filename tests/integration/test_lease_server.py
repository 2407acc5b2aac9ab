"""The lease endpoint against the real API server: a pod's bound token, made by the TokenRequest
API as the kubelet makes a projected token, names exactly that pod through a real TokenReview;
everything else is refused.

The server runs in this process (a recording handler stands in for the lease logic, which has
its own tests); the reviewer is the operator's own KubeClient on the test bed's API server."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpubatch.api.lease import LEASE_AUDIENCE, LEASE_PATH, LeaseRequest, LeaseResponse
from gpubatch.controller.leaseserver import LeaseServer, PodIdentity
from gpubatch.edges.kube import ApiEndpoint, KubeClient
from support.operator_process import OperatorProcess
from testbed import Testbed
from testbed.certs import serving_certificate

pytestmark = pytest.mark.integration

#: Never scheduled: kwok would otherwise run the pod, and a pod without a node is deleted at once.
PARKED = {"gpubatch.io/no-such-node": "parked"}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[PodIdentity] = []

    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse:
        self.seen.append(pod)
        return LeaseResponse(seq=request.seq, done=True)


def a_pod(testbed: Testbed, namespace: str, name: str) -> Any:
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            service_account_name="default",
            node_selector=PARKED,
            containers=[client.V1Container(name="worker", image="busybox")],
        ),
    )
    return testbed.core_v1().create_namespaced_pod(namespace, body)


def bound_token(
    testbed: Testbed, namespace: str, pod: Any | None, audience: str = LEASE_AUDIENCE
) -> str:
    """The token a projected volume gives the pod (TokenRequest bound to the pod)."""
    bound = None
    if pod is not None:
        bound = client.V1BoundObjectReference(
            api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
        )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[audience], expiration_seconds=600, bound_object_ref=bound
        )
    )
    answer = testbed.core_v1().create_namespaced_service_account_token(
        "default", namespace, request
    )
    return str(answer.status.token)


def delete_and_wait(testbed: Testbed, namespace: str, name: str) -> None:
    api = testbed.core_v1()
    api.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            api.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(0.2)
    raise AssertionError(f"pod {namespace}/{name} still there after 30 s")


def test_a_pods_bound_token_names_that_pod_and_nothing_else_gets_in(
    testbed: Testbed, namespace: str, tmp_path: Path
):
    pod = a_pod(testbed, namespace, "warm-0")
    gone = a_pod(testbed, namespace, "warm-gone")
    tokens = {
        "pod": bound_token(testbed, namespace, pod),
        "other audience": bound_token(testbed, namespace, pod, audience="someone-else"),
        "not bound to a pod": bound_token(testbed, namespace, None),
        "deleted pod": bound_token(testbed, namespace, gone),
    }
    delete_and_wait(testbed, namespace, "warm-gone")
    cert, key = serving_certificate(testbed.certs, tmp_path, "lease")
    certs = testbed.certs
    endpoint = ApiEndpoint(
        server=testbed.server,
        ca_path=str(certs.ca_cert),
        certificate_path=str(certs.admin_cert),
        private_key_path=str(certs.admin_key),
    )
    recorder = Recorder()

    async def run() -> dict[str, int]:
        async with KubeClient(endpoint) as kube:
            server = LeaseServer(
                recorder, kube, host="127.0.0.1", port=0, cert_file=str(cert), key_file=str(key)
            )
            await server.start()
            url = f"https://127.0.0.1:{server.port}{LEASE_PATH}"
            context = ssl.create_default_context(cafile=str(certs.ca_cert))
            answers: dict[str, int] = {}
            try:
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=context)
                ) as http:

                    async def post(token: str, target: str = url) -> int:
                        async with http.post(
                            target,
                            data=json.dumps({"batchUid": "b-1", "seq": 4}),
                            headers={"Authorization": f"Bearer {token}"},
                        ) as response:
                            return response.status

                    for what, token in tokens.items():
                        answers[what] = await post(token)
                    answers["pod, again"] = await post(tokens["pod"])
                    reviews = kube.stats.requests.get(("POST", 201), 0)
                    answers["TokenReviews"] = reviews
                    plain = url.replace("https://", "http://")
                    with pytest.raises(aiohttp.ClientError):
                        await post(tokens["pod"], plain)
            finally:
                await server.stop()
            return answers

    answers = asyncio.run(run())
    assert answers == {
        "pod": 200,
        "other audience": 401,
        "not bound to a pod": 403,
        "deleted pod": 401,
        "pod, again": 200,
        # One review per token; the pod's second request was answered from the cache.
        "TokenReviews": 4,
    }
    assert (
        recorder.seen == [PodIdentity(namespace=namespace, name="warm-0", uid=pod.metadata.uid)] * 2
    )


def test_the_test_beds_operator_serves_leases_at_the_url_it_tells_pods(
    testbed: Testbed, namespace: str, running_operator: OperatorProcess
):
    """The operator process's --lease-* flags: TLS verified with the CA pods get, and tokens
    checked by the operator's own TokenReviews (a token that names no pod is refused, whatever
    the lease logic would answer)."""
    context = ssl.create_default_context(cafile=str(running_operator.lease_ca))
    body = json.dumps({"batchUid": "b-1"}).encode()

    def post(token: str) -> tuple[int, str]:
        request = urllib.request.Request(
            running_operator.lease_url,
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert post("not-a-token")[0] == 401
    status, message = post(bound_token(testbed, namespace, None))
    assert (status, message) == (
        403,
        f"system:serviceaccount:{namespace}:default is not a pod: present the pod's "
        f"projected service-account token for audience {LEASE_AUDIENCE}",
    )
