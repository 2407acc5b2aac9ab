"""The lease endpoint over real HTTPS on loopback, with a scripted TokenReview answer and a
recording lease handler: what each kind of request gets back, and what the handler sees.

The TokenReview against a real API server (bound tokens, deleted pods) is in
tests/integration/test_lease_server.py; here the reviewer is a stand-in so every refusal can
be produced on demand."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gpubatch.api.lease import (
    LEASE_AUDIENCE,
    LEASE_PATH,
    LONG_POLL_SECONDS,
    LeasedTask,
    LeaseRequest,
    LeaseResponse,
)
from gpubatch.controller.leaseserver import (
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    MAX_BODY_BYTES,
    LeaseServer,
    PodIdentity,
)
from testbed import certs

pytestmark = pytest.mark.process

TOKEN = "pod-token"
POD = PodIdentity(namespace="team-a", name="sam-warm-0", uid="uid-0")
ANSWER = LeaseResponse(
    seq=1, tasks=(LeasedTask(index=3, attempt=0, environ={"GPUBATCH_TASK_INDEX": "3"}),)
)
BODY = {"batchUid": "b-1", "seq": 0}


class Reviewer:
    """Answers TokenReviews from a table; counts how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0
        self.fail = False
        self.statuses: dict[str, dict[str, Any]] = {
            TOKEN: {
                "authenticated": True,
                "audiences": [LEASE_AUDIENCE],
                "user": {
                    "username": "system:serviceaccount:team-a:default",
                    "extra": {EXTRA_POD_NAME: [POD.name], EXTRA_POD_UID: [POD.uid]},
                },
            },
            "sa-token": {
                "authenticated": True,
                "user": {"username": "system:serviceaccount:team-a:default"},
            },
        }

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        self.asked += 1
        assert audiences == [LEASE_AUDIENCE]
        if self.fail:
            raise ConnectionError("API server unreachable")
        return self.statuses.get(token, {"authenticated": False, "error": "invalid bearer token"})


class Handler:
    """Records what it was asked; answers ANSWER, or fails, or waits to be released."""

    def __init__(self) -> None:
        self.seen: list[tuple[PodIdentity, LeaseRequest]] = []
        self.fail = False
        self.entered = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse:
        self.seen.append((pod, request))
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("status write refused")
        return ANSWER


class Endpoint:
    """A started LeaseServer and an HTTPS client that trusts its CA."""

    def __init__(self, server: LeaseServer, client: aiohttp.ClientSession) -> None:
        self.server, self.client = server, client
        self.url = f"https://127.0.0.1:{server.port}{LEASE_PATH}"

    async def post(
        self, body: Any = BODY, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.client.post(self.url, data=data, headers=headers) as response:
            return response.status, await response.text()


def serve(
    tmp_path: Path,
    test: Callable[[Endpoint, Reviewer, Handler], Awaitable[None]],
) -> None:
    """Run `test` against a fresh server on a free port."""
    pki = certs.generate(tmp_path / "pki")

    async def run() -> None:
        reviewer, handler = Reviewer(), Handler()
        server = LeaseServer(
            handler,
            reviewer,
            host="127.0.0.1",
            port=0,
            cert_file=str(pki.serving_cert),
            key_file=str(pki.serving_key),
        )
        await server.start()
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        timeout = aiohttp.ClientTimeout(total=LONG_POLL_SECONDS + 30)
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), timeout=timeout
            ) as client:
                await test(Endpoint(server, client), reviewer, handler)
        finally:
            await server.stop()

    asyncio.run(run())


def test_a_pods_request_reaches_the_handler_as_that_pod_and_gets_its_answer(tmp_path: Path):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        status, text = await endpoint.post({"batchUid": "b-1", "seq": 0, "loadSeconds": 12.5})
        assert status == 200
        assert json.loads(text) == ANSWER.model_dump(mode="json", by_alias=True)
        [(pod, request)] = handler.seen
        assert pod == POD
        assert (request.batch_uid, request.load_seconds) == ("b-1", 12.5)

    serve(tmp_path, test)


def test_a_pods_further_requests_reuse_the_review(tmp_path: Path):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        for _ in range(5):
            assert (await endpoint.post())[0] == 200
        assert reviewer.asked == 1
        assert len(handler.seen) == 5

    serve(tmp_path, test)


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        (None, 401, "missing Authorization: Bearer"),
        ("stolen", 401, "token refused by the API server: invalid bearer token"),
        ("sa-token", 403, "is not a pod"),
    ],
)
def test_who_is_not_a_pod_is_refused_before_the_handler(
    tmp_path: Path, token: str | None, status: int, message: str
):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        answer = await endpoint.post(token=token)
        assert answer[0] == status
        assert message in answer[1]
        assert handler.seen == []

    serve(tmp_path, test)


def test_refusals_are_logged_without_the_token(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        assert (await endpoint.post(token="secret-looking-token"))[0] == 401

    with caplog.at_level("WARNING", logger="gpubatch.leases"):
        serve(tmp_path, test)
    assert "refused (401)" in caplog.text
    assert "secret-looking-token" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not a lease request: body: Invalid JSON"),
        (b'{"seq": 1}', "not a lease request: batchUid: Field required"),
        (b'{"batchUid": "b", "seq": -1}', "seq: Input should be greater than or equal to 0"),
        (b'{"batchUid": "b", "protocol": 9}', "lease protocol 9 is not spoken here"),
    ],
)
def test_a_bad_request_body_is_400_with_the_reason(tmp_path: Path, raw: bytes, message: str):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        status, text = await endpoint.post(raw=raw)
        assert (status, handler.seen) == (400, [])
        assert message in text

    serve(tmp_path, test)


def test_an_oversized_body_is_413(tmp_path: Path):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        status, _ = await endpoint.post(raw=b" " * (MAX_BODY_BYTES + 1))
        assert (status, handler.seen) == (413, [])

    serve(tmp_path, test)


def test_a_failing_handler_or_api_server_is_503_so_the_worker_asks_again(tmp_path: Path):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        reviewer.fail = True
        assert (await endpoint.post())[0] == 503
        assert handler.seen == []
        reviewer.fail = False
        handler.fail = True
        assert (await endpoint.post())[0] == 503
        handler.fail = False
        assert (await endpoint.post())[0] == 200

    serve(tmp_path, test)


def test_a_held_request_is_answered_when_the_handler_answers(tmp_path: Path):
    """The long poll: the request stays open while the handler waits for work."""

    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        handler.release = asyncio.Event()
        pending = asyncio.create_task(endpoint.post())
        await handler.entered.wait()
        assert not pending.done()
        handler.release.set()
        status, text = await pending
        assert status == 200 and json.loads(text)["seq"] == 1

    serve(tmp_path, test)


def test_plain_http_gets_no_lease(tmp_path: Path):
    async def test(endpoint: Endpoint, reviewer: Reviewer, handler: Handler) -> None:
        url = f"http://127.0.0.1:{endpoint.server.port}{LEASE_PATH}"
        with pytest.raises(aiohttp.ClientError):
            async with endpoint.client.post(url, json=BODY, headers={"Authorization": "Bearer x"}):
                pass
        assert reviewer.asked == 0 and handler.seen == []

    serve(tmp_path, test)
