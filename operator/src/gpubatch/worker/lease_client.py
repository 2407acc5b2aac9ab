"""The warm pod's side of the lease transport: one POST per request, retried until answered.

A warm pod on a cluster asks the operator for work over HTTPS (`gpubatch.api.lease`). Two kinds
of failure look alike on the wire and must be told apart:

- the operator is briefly away (restarting, rolling out, overloaded): connection refused or
  reset, a timeout, a 5xx, a 429. The request is repeated, UNCHANGED, with capped exponential
  backoff and jitter (so a restarted operator is not hit by every pod at the same instant),
  because it may carry results that exist nowhere else but in this process; the operator
  records them idempotently, so a repeat after a lost answer does no harm. Only after
  `give_up_after` seconds without any answer does the pod give up (`OperatorUnreachable`);
- the pod is misconfigured (a 400/401/403/404/409, a certificate the CA does not vouch for, a
  missing token file, an answer that is not a lease): retrying cannot help, so it ends the pod
  at once with the operator's own message (`LeaseRefused`).

The token is read from its file on every request, since the kubelet rotates projected tokens.
Only the standard library is used: the worker image stays small.
"""

from __future__ import annotations

import http.client
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from pydantic import ValidationError

from gpubatch.api.lease import (
    ENV_BATCH_UID,
    ENV_LEASE_CA,
    ENV_LEASE_TOKEN_FILE,
    ENV_LEASE_URL,
    LEASE_PROTOCOL,
    LONG_POLL_SECONDS,
    LeaseRequest,
    LeaseResponse,
)
from gpubatch.worker.task import logger

#: Waiting for an answer: the operator may hold a request for LONG_POLL_SECONDS, then it and
#: the network may be slow; twice the hold is a wide margin that still notices a dead peer.
READ_TIMEOUT_SECONDS: Final = 2 * LONG_POLL_SECONDS
#: How long a pod keeps asking without any answer before it gives up.
GIVE_UP_AFTER_SECONDS: Final = 15 * 60.0
#: The part of an error answer shown in the message (it is the operator's explanation).
_ERROR_BODY_BYTES: Final = 2048
#: Status codes that mean "later", not "never".
_TRANSIENT_STATUS: Final = frozenset({408, 429})


class LeaseRefused(Exception):
    """Retrying cannot help: the pod or the operator is misconfigured (says what to fix)."""


class OperatorUnreachable(Exception):
    """No answer from the operator for longer than the pod is willing to wait."""


class _Transient(Exception):
    """One try failed in a way a later try may not."""


@dataclass(frozen=True)
class LeaseSettings:
    """Where and as whom a warm pod asks for work, from its container's environment."""

    url: str
    ca_pem: str
    token_file: str
    batch_uid: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LeaseSettings:
        """Raises LeaseRefused naming every variable that is missing or empty."""
        names = (ENV_LEASE_URL, ENV_LEASE_CA, ENV_LEASE_TOKEN_FILE, ENV_BATCH_UID)
        missing = [name for name in names if not environ.get(name, "").strip()]
        if missing:
            raise LeaseRefused(
                f"{', '.join(missing)} must be set for `gpubatch-worker --warm --lease`: the "
                "operator sets them on the warm pods it creates (URL of its lease endpoint, its "
                "CA certificate as PEM text, the projected token's file, the batch's UID); "
                "outside such a pod use `gpubatch-worker --warm --results PATH`"
            )
        url = environ[ENV_LEASE_URL].strip()
        if not url.startswith("https://"):
            raise LeaseRefused(f"{ENV_LEASE_URL} must be an https:// URL, not {url!r}")
        return cls(
            url=url,
            ca_pem=environ[ENV_LEASE_CA],
            token_file=environ[ENV_LEASE_TOKEN_FILE].strip(),
            batch_uid=environ[ENV_BATCH_UID].strip(),
        )


@dataclass
class Backoff:
    """Capped exponential delays with jitter: `first`, doubling up to `cap`, each drawn from
    its upper half so that pods that lost the operator together do not return together."""

    first: float = 0.2
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    _failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return ceiling * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0


class LeaseClient:
    """Posts `LeaseRequest`s to the operator and returns its `LeaseResponse`s."""

    def __init__(
        self,
        settings: LeaseSettings,
        *,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        give_up_after: float = GIVE_UP_AFTER_SECONDS,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._read_timeout = read_timeout
        self._give_up_after = give_up_after
        self._backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._last_answer = time.monotonic()
        try:
            tls = ssl.create_default_context(cadata=settings.ca_pem)
        except (ssl.SSLError, ValueError) as err:
            raise LeaseRefused(
                f"{ENV_LEASE_CA} is not a PEM certificate the pod can trust ({err}); it must hold "
                "the operator's CA certificate, -----BEGIN CERTIFICATE----- included"
            ) from None
        # No proxy from the environment: the operator is in the cluster, and a proxy that
        # a user's image or pod sets for downloads must not see the pod's token.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
        )

    def exchange(self, request: LeaseRequest) -> LeaseResponse:
        """Post `request` until an answer comes; the same bytes every time.

        Raises LeaseRefused (misconfiguration) or OperatorUnreachable (no answer for too long).
        """
        body = request.model_dump_json(by_alias=True).encode()
        while True:
            try:
                response = self._post(body, self._read_timeout)
            except _Transient as err:
                self.wait_before_retry(str(err))
                continue
            self._last_answer = time.monotonic()
            self._backoff.reset()
            return response

    def wait_before_retry(self, why: str) -> None:
        """Back off after a failed try; raises OperatorUnreachable once the pod has waited
        `give_up_after` seconds since the last answer."""
        waited = time.monotonic() - self._last_answer
        if waited >= self._give_up_after:
            raise OperatorUnreachable(
                f"no answer from the operator at {self.settings.url} for {waited:.0f}s "
                f"(last error: {why}); is the operator running and its Service reachable "
                "from this pod?"
            )
        delay = self._backoff.next_delay()
        logger.warning("lease request failed (%s); trying again in %.1fs", why, delay)
        self._sleep(delay)

    def post_once(self, request: LeaseRequest, timeout: float) -> LeaseResponse | None:
        """One try, for a pod that is stopping and cannot wait: the answer, or None."""
        try:
            return self._post(request.model_dump_json(by_alias=True).encode(), timeout)
        except (_Transient, LeaseRefused) as err:
            logger.warning("could not report to the operator before stopping: %s", err)
            return None

    def _post(self, body: bytes, timeout: float) -> LeaseResponse:
        """One request; raises _Transient or LeaseRefused for anything but a valid lease."""
        http_request = urllib.request.Request(  # noqa: S310 (https:// checked in LeaseSettings)
            self.settings.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._token()}",
            },
        )
        try:
            with self._opener.open(http_request, timeout=timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as err:
            raise self._status_error(err) from None
        except urllib.error.URLError as err:
            raise self._connection_error(err.reason) from None
        except (OSError, http.client.HTTPException) as err:
            raise _Transient(f"{type(err).__name__}: {err}") from None
        return self._decode(text)

    def _token(self) -> str:
        try:
            with open(self.settings.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as err:
            raise LeaseRefused(
                f"cannot read the pod's token from {ENV_LEASE_TOKEN_FILE}="
                f"{self.settings.token_file!r}: {err.strerror or err}; the pod needs the "
                "projected service-account token volume the operator declares"
            ) from None
        if not token:
            raise LeaseRefused(f"the token file {self.settings.token_file!r} is empty")
        return token

    def _status_error(self, err: urllib.error.HTTPError) -> Exception:
        with err:
            said = err.read(_ERROR_BODY_BYTES).decode("utf-8", "replace").strip()
        if err.code >= 500 or err.code in _TRANSIENT_STATUS:
            return _Transient(f"HTTP {err.code} {err.reason}: {said}")
        return LeaseRefused(
            f"the operator refused the lease request with HTTP {err.code} {err.reason}: "
            f"{said or '(no message)'}"
        )

    def _connection_error(self, reason: object) -> Exception:
        if isinstance(reason, ssl.SSLCertVerificationError):
            return LeaseRefused(
                f"the server at {self.settings.url} is not the operator this pod was told to "
                f"trust: {reason.verify_message or reason}; {ENV_LEASE_CA} must hold the CA "
                "that signed the operator's serving certificate, for the URL's host name"
            )
        return _Transient(f"{type(reason).__name__}: {reason}")

    def _decode(self, text: bytes) -> LeaseResponse:
        try:
            response = LeaseResponse.model_validate_json(text)
        except ValidationError as err:
            shown = text[:200].decode("utf-8", "replace")
            raise LeaseRefused(
                f"the answer from {self.settings.url} is not a lease ({shown!r}: "
                f"{err.error_count()} errors); is {ENV_LEASE_URL} the operator's lease endpoint?"
            ) from None
        if response.protocol != LEASE_PROTOCOL:
            raise LeaseRefused(
                f"the operator speaks lease protocol {response.protocol}, this worker "
                f"{LEASE_PROTOCOL}: use the worker image of the operator's release"
            )
        return response


__all__ = [
    "GIVE_UP_AFTER_SECONDS",
    "READ_TIMEOUT_SECONDS",
    "Backoff",
    "LeaseClient",
    "LeaseRefused",
    "LeaseSettings",
    "OperatorUnreachable",
]
