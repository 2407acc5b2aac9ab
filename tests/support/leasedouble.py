"""A small stand-in for the operator's lease endpoint, for testing the simulated warm worker
(tests/testbed/warmsim.py) by itself: the real endpoint is tested with the real operator.

It hands out tasks 0..n-1 two at a time, records the results each request carries and answers
`done` once every task is back. Scripted statuses (`answers`) come first, so tests can make the
worker repeat a request; `review` (token -> pod name or None) checks the bearer token, e.g. with
a TokenReview against the test bed, as the operator does.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from gpubatch.api.lease import LEASE_PATH, LeasedTask, LeaseRequest, LeaseResponse
from testbed.certs import CertPaths
from testbed.processes import free_port


class LeaseDouble:
    def __init__(
        self,
        tasks: int,
        answers: list[int] | None = None,
        review: Callable[[str], str | None] | None = None,
    ) -> None:
        self.queue = list(range(tasks))
        self.answers = list(answers or [])
        self.review = review or (lambda token: "pod" if token == "tok-1" else None)
        self.seq = 0
        self.bodies: list[bytes] = []
        self.results: dict[int, list[int]] = {}
        self.unrun: list[tuple[int, int]] = []
        self.pods: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        if self.answers:
            return web.Response(status=self.answers.pop(0), text="scripted")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        pod = await asyncio.to_thread(self.review, token)
        if pod is None:
            return web.Response(status=401, text="token not accepted")
        self.pods.add(pod)
        lease = LeaseRequest.model_validate_json(body)
        for r in lease.results:
            self.results.setdefault(r.index, []).append(r.result.exit_code)
        self.unrun.extend(lease.unrun)
        if not self.queue:
            return self._answer(LeaseResponse(seq=lease.seq, done=True))
        self.seq += 1
        take, self.queue = self.queue[:2], self.queue[2:]
        tasks = tuple(LeasedTask(index=i, attempt=0, environ={}) for i in take)
        return self._answer(LeaseResponse(seq=self.seq, tasks=tasks))

    @staticmethod
    def _answer(response: LeaseResponse) -> web.Response:
        return web.Response(body=response.model_dump_json(), content_type="application/json")


async def serve(double: LeaseDouble, tls: CertPaths, port: int) -> web.AppRunner:
    """Serve `double` over HTTPS on 127.0.0.1:`port` (the certificate of `tls`)."""
    app = web.Application()
    app.router.add_post(LEASE_PATH, double.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.serving_cert, tls.serving_key)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner


@contextmanager
def served(double: LeaseDouble, tls: CertPaths) -> Iterator[str]:
    """`serve` from a thread of its own; yields the lease URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(serve(double, tls, port), loop).result(timeout=30)
    try:
        yield f"https://127.0.0.1:{port}{LEASE_PATH}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
