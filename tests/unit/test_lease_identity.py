"""The lease endpoint's pure parts: which pod a TokenReview names, how long a review is
trusted, and the operator flags that turn the endpoint on."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import kopf
import pytest

from gpubatch.api.lease import LEASE_AUDIENCE, LeaseRequest, LeaseResponse
from gpubatch.controller.handlers import Operator
from gpubatch.controller.leaseserver import (
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    PodIdentity,
    Refused,
    ReviewCache,
    lease_settings,
    pod_identity,
    token_expiry,
)
from gpubatch.controller.main import parse_args
from testbed import certs

pytestmark = pytest.mark.unit

POD = PodIdentity(namespace="team-a", name="sam-warm-0", uid="0b9c-11")


def a_review(**changes: Any) -> dict[str, Any]:
    """A TokenReview status as the API server returns it for a pod's bound token."""
    status: dict[str, Any] = {
        "authenticated": True,
        "audiences": [LEASE_AUDIENCE],
        "user": {
            "username": "system:serviceaccount:team-a:default",
            "uid": "sa-uid",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a"],
            "extra": {EXTRA_POD_NAME: ["sam-warm-0"], EXTRA_POD_UID: ["0b9c-11"]},
        },
    }
    status.update(changes)
    return status


def a_jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


# ----------------------------------------------------------------------------- identity
def test_a_pods_bound_token_names_the_pod_and_its_namespace():
    assert pod_identity(a_review(), LEASE_AUDIENCE) == POD


def test_a_token_the_api_server_refused_is_401_with_its_reason():
    with pytest.raises(Refused) as refused:
        pod_identity({"authenticated": False, "error": "token has expired"}, LEASE_AUDIENCE)
    assert refused.value.status == 401
    assert "token has expired" in refused.value.message


def test_a_token_for_another_audience_is_401():
    with pytest.raises(Refused) as refused:
        pod_identity(a_review(audiences=["https://kubernetes.default.svc"]), LEASE_AUDIENCE)
    assert (refused.value.status, refused.value.message) == (
        401,
        f"token is not for audience {LEASE_AUDIENCE}",
    )


def test_a_service_account_token_not_bound_to_a_pod_is_403():
    review = a_review()
    review["user"]["extra"] = {}
    with pytest.raises(Refused) as refused:
        pod_identity(review, LEASE_AUDIENCE)
    assert refused.value.status == 403
    assert "system:serviceaccount:team-a:default is not a pod" in refused.value.message


def test_a_person_is_403_even_with_pod_extras():
    review = a_review()
    review["user"]["username"] = "alice"
    with pytest.raises(Refused) as refused:
        pod_identity(review, LEASE_AUDIENCE)
    assert refused.value.status == 403


# ----------------------------------------------------------------------------- the cache
class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_review_is_trusted_for_the_ttl_and_then_asked_again():
    clock = Clock()
    cache = ReviewCache(60, clock=clock)
    cache.put("opaque-token", POD)
    clock.now += 59
    assert cache.get("opaque-token") == POD
    clock.now += 1
    assert cache.get("opaque-token") is None
    assert len(cache) == 0


def test_a_review_is_never_trusted_past_the_tokens_own_expiry():
    clock = Clock()
    token = a_jwt({"exp": clock.now + 10, "aud": [LEASE_AUDIENCE]})
    cache = ReviewCache(60, clock=clock)
    cache.put(token, POD)
    clock.now += 9
    assert cache.get(token) == POD
    clock.now += 1
    assert cache.get(token) is None


def test_an_expired_token_is_not_cached_at_all():
    clock = Clock()
    token = a_jwt({"exp": clock.now - 1})
    cache = ReviewCache(60, clock=clock)
    cache.put(token, POD)
    assert len(cache) == 0


def test_the_cache_keeps_no_token_and_stays_bounded():
    clock = Clock()
    cache = ReviewCache(60, max_entries=3, clock=clock)
    for number in range(5):
        cache.put(f"token-{number}", POD)
    assert len(cache) == 3
    assert cache.get("token-4") == POD and cache.get("token-0") is None
    assert not any("token-" in key for key in cache._entries)


def test_token_expiry_reads_exp_and_tolerates_opaque_tokens():
    assert token_expiry(a_jwt({"exp": 1234})) == 1234.0
    assert token_expiry(a_jwt({"sub": "x"})) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.b") is None


# ----------------------------------------------------------------------------- the flags
@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pki = certs.generate(tmp_path_factory.mktemp("pki"))
    return {
        "tls.crt": str(pki.serving_cert),
        "tls.key": str(pki.serving_key),
        "ca.crt": str(pki.ca_cert),
    }


def test_no_lease_flags_means_no_lease_endpoint():
    assert parse_args([]).lease is None


def test_all_lease_flags_give_the_settings(pem_files: dict[str, str]):
    args = parse_args(
        [
            "--lease-port=8443",
            f"--lease-cert={pem_files['tls.crt']}",
            f"--lease-key={pem_files['tls.key']}",
            f"--lease-ca={pem_files['ca.crt']}",
            "--lease-url=https://gpubatch.gpubatch-system.svc:8443/v1/lease",
        ]
    )
    assert args.lease.port == 8443
    assert args.lease.host == "0.0.0.0"
    assert args.lease.ca_pem().startswith("-----BEGIN CERTIFICATE-----")


def test_half_given_lease_flags_name_what_is_missing(pem_files: dict[str, str]):
    with pytest.raises(ValueError, match="needs --lease-key, --lease-ca, --lease-url as well"):
        lease_settings(
            port=8443, host="0.0.0.0", cert=pem_files["tls.crt"], key=None, ca=None, url=None
        )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"url": "http://op:8443/v1/lease"}, "must be an https:// URL"),
        ({"port": 70000}, "is not a TCP port"),
        ({"key": "/no/such/key.pem"}, "--lease-key=/no/such/key.pem: no readable file there"),
        ({"key": "CA"}, "not a PEM certificate and its private key"),
    ],
)
def test_bad_lease_flags_say_what_to_change(
    pem_files: dict[str, str], change: dict[str, Any], complaint: str
):
    flags: dict[str, Any] = {
        "port": 8443,
        "host": "0.0.0.0",
        "cert": pem_files["tls.crt"],
        "key": pem_files["tls.key"],
        "ca": pem_files["ca.crt"],
        "url": "https://op:8443/v1/lease",
    }
    if change.get("key") == "CA":  # a readable file that is not the certificate's key
        change = {"key": pem_files["ca.crt"]}
    with pytest.raises(ValueError, match=complaint):
        lease_settings(**(flags | change))


def test_the_operator_refuses_to_start_with_half_the_lease_flags(
    capsys: pytest.CaptureFixture[str],
):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--lease-port=8443"])
    assert exited.value.code == 2
    assert "the lease endpoint needs --lease-cert" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the operator
class Answering:
    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse:
        return LeaseResponse(seq=request.seq + 1)


def test_the_operator_asks_to_retry_until_it_has_a_lease_handler_and_a_client():
    """The lease server starts before kopf's login made the API client, and before the lease
    logic exists: until then each request fails, which the server answers with 503."""
    operator = Operator()
    request = LeaseRequest(batch_uid="b-1", seq=2)
    with pytest.raises(kopf.TemporaryError, match="no lease handler yet"):
        asyncio.run(operator.handle_lease(POD, request))
    with pytest.raises(kopf.TemporaryError, match="no API credentials yet"):
        asyncio.run(operator.review_token("token", [LEASE_AUDIENCE]))
    operator.lease_handler = Answering()
    assert asyncio.run(operator.handle_lease(POD, request)).seq == 3
