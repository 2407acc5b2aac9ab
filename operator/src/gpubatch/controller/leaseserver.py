"""The operator's HTTPS lease endpoint: where warm worker pods ask for work (api/lease.py).

Why HTTPS with a TokenReview, not the pods writing to the API: a warm pod then needs no RBAC at
all. It presents its projected service-account token for `LEASE_AUDIENCE`; the kubelet binds that
token to the pod, so the API server's TokenReview names the pod (namespace, name, uid) and stops
accepting the token once the pod is gone. The operator only needs `create` on tokenreviews.

A pod asks again and again (each lease, and each long poll), so a successful review is cached
for a short while (keyed by a hash of the token, never past the token's own expiry): the
issue-15 budget is a few hundred API requests per thousand tasks, all of it.

This module knows nothing of leases themselves: it authenticates, parses and answers; the
`LeaseHandler` decides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from pydantic import ValidationError

from gpubatch.api.lease import (
    LEASE_AUDIENCE,
    LEASE_PATH,
    LEASE_PROTOCOL,
    LeaseRequest,
    LeaseResponse,
)

log = logging.getLogger("gpubatch.leases")

#: A lease request carries at most MAX_LEASE_TASKS results of a few KiB each.
MAX_BODY_BYTES: Final = 1024 * 1024
#: How long a successful TokenReview is trusted without asking the API server again.
REVIEW_CACHE_SECONDS: Final = 60.0
#: Cached reviews kept at most (a pod keeps one token at a time; kubelets rotate them hourly).
REVIEW_CACHE_ENTRIES: Final = 20_000
#: How long stopping waits for requests in flight (long polls would hold it 30 s).
STOP_GRACE_SECONDS: Final = 2.0

EXTRA_POD_NAME: Final = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID: Final = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX: Final = "system:serviceaccount:"


@dataclass(frozen=True)
class PodIdentity:
    """The pod a lease request comes from, as the API server vouches for it."""

    namespace: str
    name: str
    uid: str


class LeaseHandler(Protocol):
    """Decides what a pod gets. May hold the request up to LONG_POLL_SECONDS; raising any
    exception answers 503, which the worker retries."""

    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse: ...


class TokenReviewer(Protocol):
    """Asks the API server about a token: returns the TokenReview's `status`."""

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]: ...


class Refused(Exception):
    """A request answered with an HTTP error; `message` is safe to show (no token in it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- identity
def pod_identity(status: Mapping[str, Any], audience: str) -> PodIdentity:
    """The pod a TokenReview status names. 401 for a token the API server did not accept (or
    not for our audience); 403 for a valid token that is not a pod's bound token."""
    if not status.get("authenticated"):
        reason = str(status.get("error") or "not authenticated")
        raise Refused(401, f"token refused by the API server: {reason[:200]}")
    audiences = status.get("audiences")
    if audiences is not None and audience not in audiences:
        raise Refused(401, f"token is not for audience {audience}")
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    extra = user.get("extra") or {}
    names, uids = extra.get(EXTRA_POD_NAME) or [], extra.get(EXTRA_POD_UID) or []
    if not username.startswith(_SA_PREFIX) or not names or not uids:
        raise Refused(
            403,
            f"{username or 'this identity'} is not a pod: present the pod's projected "
            f"service-account token for audience {audience}",
        )
    namespace = username[len(_SA_PREFIX) :].partition(":")[0]
    return PodIdentity(namespace=namespace, name=str(names[0]), uid=str(uids[0]))


def token_expiry(token: str) -> float | None:
    """The `exp` claim (Unix seconds) of a JWT, read without checking the signature: only used
    to bound the cache of a token the API server has already accepted."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError, binascii.Error):
        return None
    return float(exp) if isinstance(exp, int | float) else None


class ReviewCache:
    """Recently reviewed tokens (by SHA-256, never the token itself) and the pod each names."""

    def __init__(
        self,
        ttl: float = REVIEW_CACHE_SECONDS,
        *,
        max_entries: int = REVIEW_CACHE_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, PodIdentity]] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> PodIdentity | None:
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, token: str, pod: PodIdentity) -> None:
        now = self._clock()
        until = now + self.ttl
        expiry = token_expiry(token)
        if expiry is not None:
            until = min(until, expiry)
        if until <= now:
            return
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest insertion
        self._entries[self._key(token)] = (until, pod)

    def __len__(self) -> int:
        return len(self._entries)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class LeaseSettings:
    """The operator's lease flags: where it listens, its serving certificate, and what pods
    are told (the URL and the CA that signed the certificate)."""

    port: int
    cert_file: str
    key_file: str
    ca_file: str
    url: str
    host: str = "0.0.0.0"  # noqa: S104 - pods reach the operator through its Service

    def ca_pem(self) -> str:
        """The CA certificate pods get to verify the operator (GPUBATCH_LEASE_CA)."""
        return Path(self.ca_file).read_text()


def lease_settings(
    *,
    port: int | None,
    host: str,
    cert: str | None,
    key: str | None,
    ca: str | None,
    url: str | None,
) -> LeaseSettings | None:
    """The lease settings from the flags: None when none is given (no lease endpoint); raises
    ValueError saying what to add when only some are, or when a file cannot be read."""
    given = {"--lease-port": port, "--lease-cert": cert, "--lease-key": key}
    given |= {"--lease-ca": ca, "--lease-url": url}
    missing = [flag for flag, value in given.items() if value in (None, "")]
    if len(missing) == len(given):
        return None
    if missing:
        raise ValueError(
            f"the lease endpoint needs {', '.join(missing)} as well "
            f"(given: {', '.join(f for f in given if f not in missing)}); "
            "give all five flags, or none to run without warm workers"
        )
    assert port is not None and cert and key and ca and url
    if not 0 < port < 65536:
        raise ValueError(f"--lease-port={port} is not a TCP port (1-65535)")
    if not url.startswith("https://"):
        raise ValueError(f"--lease-url={url} must be an https:// URL (pods only speak TLS)")
    for flag, path in (("--lease-cert", cert), ("--lease-key", key), ("--lease-ca", ca)):
        if not os.access(path, os.R_OK):
            raise ValueError(f"{flag}={path}: no readable file there")
    try:
        server_ssl_context(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(
            f"--lease-cert={cert} with --lease-key={key}: not a PEM certificate and its "
            f"private key ({error})"
        ) from None
    return LeaseSettings(port=port, cert_file=cert, key_file=key, ca_file=ca, url=url, host=host)


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


# ----------------------------------------------------------------------------- the server
class LeaseServer:
    """POST LEASE_PATH over HTTPS: authenticate the pod, parse its request, ask the handler."""

    def __init__(
        self,
        handler: LeaseHandler,
        reviewer: TokenReviewer,
        *,
        host: str,
        port: int,
        cert_file: str,
        key_file: str,
        audience: str = LEASE_AUDIENCE,
        cache: ReviewCache | None = None,
    ) -> None:
        self.handler = handler
        self.reviewer = reviewer
        self.host = host
        self.port = port
        self.audience = audience
        self.cache = cache if cache is not None else ReviewCache()
        self._ssl = server_ssl_context(cert_file, key_file)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; `self.port` is then the bound port (asked for 0: a free one)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(LEASE_PATH, self._serve)
        # No access log (a line per long poll is noise); aiohttp sets no handler timeout, so a
        # long poll is never cut short by the server. On stop, held long polls get a moment and
        # are then dropped: a worker repeats an unanswered request, and recording is idempotent.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_GRACE_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("lease endpoint listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, http: web.Request) -> web.Response:
        try:
            pod = await self._authenticate(http.headers.get("Authorization", ""))
            request = await self._parse(http)
        except Refused as refused:
            return self._refuse(http, refused)
        try:
            answer = await self.handler.handle_lease(pod, request)
        except Exception:  # the worker retries; nothing is acknowledged
            log.warning("lease request of pod %s/%s failed", pod.namespace, pod.name, exc_info=True)
            return web.Response(status=503, text="the operator could not answer; ask again")
        return web.json_response(answer.model_dump(mode="json", by_alias=True))

    def _refuse(self, http: web.Request, refused: Refused) -> web.Response:
        log.warning(
            "lease request from %s refused (%d): %s", http.remote, refused.status, refused.message
        )
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        return web.Response(status=refused.status, text=refused.message, headers=headers)

    async def _authenticate(self, authorization: str) -> PodIdentity:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "missing Authorization: Bearer <the pod's projected token>")
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        try:
            status = await self.reviewer.review_token(token, [self.audience])
        except Exception as error:  # the API server is unreachable or refused us
            log.warning("TokenReview failed: %s", error)
            raise Refused(503, "cannot check the token now; ask again") from None
        pod = pod_identity(status, self.audience)
        self.cache.put(token, pod)
        return pod

    async def _parse(self, http: web.Request) -> LeaseRequest:
        try:
            body = await http.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, f"request body over {MAX_BODY_BYTES} bytes") from None
        try:
            request = LeaseRequest.model_validate_json(body)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
                for item in error.errors()[:5]
            )
            raise Refused(400, f"not a lease request: {problems}") from None
        if request.protocol != LEASE_PROTOCOL:
            raise Refused(
                400,
                f"lease protocol {request.protocol} is not spoken here (this operator speaks "
                f"{LEASE_PROTOCOL}): run a worker image of the operator's version",
            )
        return request


__all__ = [
    "MAX_BODY_BYTES",
    "REVIEW_CACHE_SECONDS",
    "LeaseHandler",
    "LeaseServer",
    "LeaseSettings",
    "PodIdentity",
    "Refused",
    "ReviewCache",
    "TokenReviewer",
    "lease_settings",
    "pod_identity",
    "server_ssl_context",
    "token_expiry",
]
