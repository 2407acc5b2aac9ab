"""The operator's hot-path Kubernetes client: create, patch and delete pods; patch batch status.

Why not the `kubernetes` package: it is synchronous, and kopf runs everything on one asyncio loop
that must never block. Why not `kubernetes_asyncio`: its generated models serialise every pod
through Python objects, which costs more CPU per create than the request itself; a task pod is
already a plain dict. So this is a thin aiohttp client that speaks JSON, bounded by a semaphore,
with the error semantics the reconcile needs: 409 on create and 404 on delete/patch mean "already
done" and are not errors (deterministic pod names make a repeated create harmless).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from gpubatch.api.names import GROUP, PLURAL, VERSION
from gpubatch.core.kueueworkload import WORKLOAD_API_VERSION

JSON = dict[str, Any]
#: Who owns the fields the operator applies server-side (the Finished condition of a Workload).
FIELD_MANAGER = "gpubatch-operator"


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API server is and how to authenticate (from kopf's login or a kubeconfig)."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = None
    certificate_path: str | None = None
    certificate_data: str | None = None
    private_key_path: str | None = None
    private_key_data: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https://"):
            return False
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_path, cadata=self.ca_data)
        cert, key = self.certificate_path, self.private_key_path
        if self.certificate_data is not None:
            cert = _to_file(self.certificate_data, "cert")
        if self.private_key_data is not None:
            key = _to_file(self.private_key_data, "key")
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context


def _to_file(data: str, what: str) -> str:
    """ssl can only load client certificates from files; keep them in a private temp file."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - must outlive this call
        "w", prefix=f"gpubatch-{what}-", suffix=".pem", delete=False
    )
    with handle:
        handle.write(data)
    Path(handle.name).chmod(0o600)
    return handle.name


class ApiError(Exception):
    """A request the API server refused for a reason the caller must handle or report."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.reason = ""
        self.message = body[:500]
        try:
            parsed = json.loads(body)
            self.reason = str(parsed.get("reason", ""))
            self.message = str(parsed.get("message", self.message))
        except (ValueError, AttributeError):
            pass
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")


@dataclass
class RequestStats:
    """Counters the metrics endpoint exposes (requests by verb and outcome)."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.seconds += seconds


class KubeClient:
    """An asyncio client for the few calls the reconcile makes; safe to share across batches."""

    def __init__(
        self, endpoint: ApiEndpoint, *, concurrency: int = 32, timeout: float = 30
    ) -> None:
        self.endpoint = endpoint
        self._semaphore = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.stats = RequestStats()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": "gpubatch-operator"}
            if self.endpoint.token:
                headers["Authorization"] = f"Bearer {self.endpoint.token}"
            connector = aiohttp.TCPConnector(
                ssl=self.endpoint.ssl_context(), limit=self._semaphore._value
            )
            self._session = aiohttp.ClientSession(
                base_url=None, headers=headers, connector=connector, timeout=self._timeout
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> tuple[int, JSON | None]:
        """Send one request; return (status, parsed body). Raises ApiError for status >= 400.

        Writes whose answer nobody reads pass `decode=False`: the API server echoes the whole
        object back, and parsing a pod or a batch per write is a real share of the operator's
        CPU at thousands of writes."""
        url = self.endpoint.server.rstrip("/") + path
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._semaphore:
            began = time.monotonic()
            async with self._session_now().request(
                method, url, data=data, headers=headers, params=params
            ) as response:
                raw = await response.read()
                self.stats.add(method, response.status, time.monotonic() - began)
        if response.status >= 400:
            raise ApiError(response.status, method, path, raw.decode("utf-8", "replace"))
        return response.status, (json.loads(raw) if raw and decode else None)

    async def _unless_gone(
        self, method: str, path: str, **options: Any
    ) -> tuple[bool, JSON | None]:
        """`request`, with a 404 answered as (False, None): the object is gone, which the
        reconcile treats as done, not as an error."""
        try:
            _, body = await self.request(method, path, **options)
        except ApiError as error:
            if error.status == 404:
                return False, None
            raise
        return True, body

    # ------------------------------------------------------------------------------- pods
    async def create_pod(self, namespace: str, pod: JSON) -> bool:
        """Create a pod; False when it already exists (409), which is not an error here."""
        try:
            await self.request(
                "POST", f"/api/v1/namespaces/{quote(namespace)}/pods", body=pod, decode=False
            )
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return False
            raise
        return True

    async def remove_pod_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        """Drop one finalizer (strategic merge keeps any others); False when the pod is gone."""
        patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}}
        return await self._patch_pod(namespace, name, patch, "strategic-merge-patch+json")

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        patch = {"metadata": {"annotations": annotations}}
        return await self._patch_pod(namespace, name, patch, "merge-patch+json")

    async def _patch_pod(self, namespace: str, name: str, patch: JSON, kind: str) -> bool:
        found, _ = await self._unless_gone(
            "PATCH",
            f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}",
            body=patch,
            content_type=f"application/{kind}",
            decode=False,
        )
        return found

    async def delete_pod(
        self, namespace: str, name: str, *, grace_seconds: int | None = None
    ) -> bool:
        """Delete a pod; False when it is already gone."""
        body: JSON = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        found, _ = await self._unless_gone(
            "DELETE",
            f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}",
            body=body,
            decode=False,
        )
        return found

    async def list_pods(self, namespace: str, label_selector: str) -> list[JSON]:
        _, body = await self.request(
            "GET",
            f"/api/v1/namespaces/{quote(namespace)}/pods",
            params={"labelSelector": label_selector},
        )
        return list((body or {}).get("items", []))

    # ------------------------------------------------------------------------------- tokens
    async def review_token(self, token: str, audiences: list[str]) -> JSON:
        """The API server's verdict on a bearer token (a TokenReview's `status`): who it names,
        and for a pod's bound token which pod. Needs `create` on tokenreviews."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        _, body = await self.request(
            "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=review
        )
        return dict((body or {}).get("status") or {})

    # ------------------------------------------------------------------------------- Kueue
    async def get_workload(self, namespace: str, name: str) -> JSON | None:
        """A Kueue Workload; None when it does not exist. Needs `get` on workloads."""
        found, body = await self._unless_gone("GET", _workload_path(namespace, name))
        return body if found else None

    async def apply_workload_condition(self, namespace: str, name: str, condition: JSON) -> bool:
        """Add one condition to a Workload's status with server-side apply (Kueue keeps the
        conditions as a map by type, so Kueue's own conditions stay); False when the Workload
        is gone. Needs `patch` on workloads/status."""
        body = {
            "apiVersion": WORKLOAD_API_VERSION,
            "kind": "Workload",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"conditions": [condition]},
        }
        found, _ = await self._unless_gone(
            "PATCH",
            _workload_path(namespace, name) + "/status",
            body=body,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            decode=False,
        )
        return found

    # ------------------------------------------------------------------------------- batches
    async def patch_batch_status(self, namespace: str, name: str, status: JSON) -> None:
        """Merge-patch the status subresource."""
        await self.request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}/status",
            body={"status": status},
            content_type="application/merge-patch+json",
            decode=False,
        )

    async def delete_batch(self, namespace: str, name: str) -> bool:
        found, _ = await self._unless_gone(
            "DELETE",
            f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}",
            body={
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "propagationPolicy": "Background",
            },
        )
        return found


def _workload_path(namespace: str, name: str) -> str:
    return f"/apis/{WORKLOAD_API_VERSION}/namespaces/{quote(namespace)}/workloads/{quote(name)}"
