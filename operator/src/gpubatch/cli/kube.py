"""The cluster side of the command: read and apply GPUBatch objects, list their task pods.

Uses the official `kubernetes` client with the user's kubeconfig (KUBECONFIG, or ~/.kube/config,
or the in-cluster service account), as kubectl would: the command is used by people, one
request at a time, so the operator's async client (edges.kube) has nothing to offer here. The
package is imported when a cluster command runs, so `validate`, `expand` and `run` start fast
and work without it.

`apply` is server-side apply with field manager `gpubatch`: one request creates the batch or
updates it to match the file, and a field removed from the file is removed from the object
(a merge patch would keep it).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from typing import Any, Final

from gpubatch.api.names import GROUP, PLURAL, VERSION
from gpubatch.api.spec import LARGE_LIST_ADVICE
from gpubatch.api.status import GPUBatchStatus
from gpubatch.cli.errors import CliError, Exit
from gpubatch.core.podspec import task_selector

FIELD_MANAGER: Final = "gpubatch"


class Cluster:
    """GPUBatch objects and their pods in one namespace of the current kubeconfig context."""

    def __init__(self, *, namespace: str | None = None, context: str | None = None) -> None:
        # Held as Any: the client's modules are only partly typed.
        client: Any = importlib.import_module("kubernetes.client")
        config: Any = importlib.import_module("kubernetes.config")
        try:
            config.load_kube_config(context=context)
            contexts, active = config.list_kube_config_contexts()
            if context is not None:
                active = next((c for c in contexts if c.get("name") == context), active)
            default_namespace = (active or {}).get("context", {}).get("namespace")
        except config.ConfigException as kube_error:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise CliError(
                    f"no cluster configured: {kube_error}; set KUBECONFIG (or ~/.kube/config) "
                    "to the cluster's kubeconfig, or run `gpubatch run FILE` to run on this "
                    "machine",
                    Exit.ENVIRONMENT,
                ) from None
            default_namespace = _in_cluster_namespace()
        self.namespace = namespace or default_namespace or "default"
        self._api_client: Any = client.ApiClient()
        self._custom: Any = client.CustomObjectsApi(self._api_client)
        self._core: Any = client.CoreV1Api(self._api_client)
        self.server = str(self._api_client.configuration.host)

    def where(self, name: str) -> str:
        return f"GPUBatch {self.namespace}/{name}"

    # ------------------------------------------------------------------------- batches
    def get(self, name: str) -> dict[str, Any]:
        """The batch object; CliError (exit 3) when it does not exist."""
        found = self.find(name)
        if found is None:
            raise CliError(
                f"{self.where(name)} not found (kubectl get gpub -n {self.namespace} lists "
                "the batches)",
                Exit.ENVIRONMENT,
            )
        return found

    def find(self, name: str) -> dict[str, Any] | None:
        with self._errors(f"reading {self.where(name)}"):
            try:
                obj = self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                )
            except Exception as err:
                if getattr(err, "status", None) == 404:
                    return None
                raise
        return dict(obj)

    def apply(self, document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or update the batch to match `document`; returns (object, created)."""
        metadata = dict(document.get("metadata") or {})
        name = str(metadata["name"])
        given = metadata.get("namespace")
        if given and given != self.namespace:
            raise CliError(
                f"the file puts the batch in namespace {given!r} but the command targets "
                f"{self.namespace!r}; pass -n {given} or remove metadata.namespace"
            )
        metadata["namespace"] = self.namespace
        body = {**document, "metadata": metadata}
        body.pop("status", None)
        with self._errors(f"applying {self.where(name)}"):
            response = self._custom.patch_namespaced_custom_object_with_http_info(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        # 201 when the apply created the object. The client decodes only 200 bodies of a
        # patch, so a created object is read back.
        if isinstance(response, tuple):  # the client's legacy (data, status, headers) form
            data, code = response[0], response[1]
        else:
            data, code = response.data, response.status_code
        obj = data if data is not None else self.get(name)
        return dict(obj), code == 201

    def apply_workload(self, workload: dict[str, Any]) -> None:
        """Create or update a Kueue Workload (server-side apply, like the batch)."""
        name = str(workload["metadata"]["name"])
        group, version = str(workload["apiVersion"]).split("/")
        with self._errors(f"applying Kueue Workload {self.namespace}/{name}"):
            self._custom.patch_namespaced_custom_object(
                group,
                version,
                self.namespace,
                "workloads",
                name,
                workload,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )

    # ---------------------------------------------------------------------------- pods
    def task_pods(self, uid: str) -> list[dict[str, Any]]:
        """The batch's task pods that still exist, as plain dicts (API field names)."""
        with self._errors("listing the batch's pods"):
            listed = self._core.list_namespaced_pod(
                self.namespace, label_selector=task_selector(uid)
            )
        return [self._api_client.sanitize_for_serialization(pod) for pod in listed.items]

    def node_labels(self, nodes: Iterable[str], label: str) -> dict[str, str]:
        """`label` of each node, where it can be read (reading nodes may be forbidden)."""
        found: dict[str, str] = {}
        for node in sorted(set(nodes)):
            try:
                labels = self._core.read_node(node).metadata.labels or {}
            except Exception:  # noqa: S112 - forbidden or gone: the report shows the node name
                continue
            if label in labels:
                found[node] = str(labels[label])
        return found

    # --------------------------------------------------------------------------- errors
    def _errors(self, doing: str) -> _ApiErrors:
        return _ApiErrors(doing, self.server)


class _ApiErrors:
    """Turns client exceptions into CliErrors saying what failed and where."""

    def __init__(self, doing: str, server: str) -> None:
        self._doing = doing
        self._server = server

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        if error is None or isinstance(error, CliError):
            return
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(error, ApiException):
            advice = f"; {LARGE_LIST_ADVICE}" if error.status == 413 else ""
            raise CliError(
                f"{self._doing}: HTTP {error.status} {_api_message(error)}{advice}",
                Exit.ENVIRONMENT if error.status in (401, 403, 404) else Exit.USAGE,
            ) from None
        if isinstance(error, HTTPError | OSError):
            raise CliError(
                f"{self._doing}: cannot reach the cluster at {self._server}: {error}",
                Exit.ENVIRONMENT,
            ) from None


def parse_status(obj: dict[str, Any]) -> GPUBatchStatus | None:
    """The object's status as the model, or None before the operator wrote one."""
    raw = obj.get("status")
    return GPUBatchStatus.model_validate(raw) if raw else None


def _api_message(error: Any) -> str:
    try:
        body = json.loads(error.body or "")
        return f"{body.get('reason', '')}: {body.get('message', '')}".strip(": ")
    except (TypeError, ValueError):
        return str(error.reason or "")


def _in_cluster_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None
