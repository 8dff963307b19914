"""A thin Kubernetes REST client on top of the `kubernetes` package's ApiClient.

It computes REST paths itself for the few kinds `render` produces (no discovery round trips),
applies with server-side apply (`application/apply-patch+yaml`, JSON being valid YAML), patches
the status subresource with a JSON merge patch, and streams watches with `kubernetes.watch`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from llmd_modelservice.spec import API_GROUP, API_VERSION


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def collection(self, namespace: str | None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace is None:
            return f"{prefix}/{self.plural}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


MODELSERVICE = Kind(f"{API_GROUP}/{API_VERSION}", "ModelService", "modelservices")
KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Service", "services"),
        Kind("inference.networking.k8s.io/v1", "InferencePool", "inferencepools"),
        Kind("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective", "inferenceobjectives"),
    )
}


def kind_of(obj: dict[str, Any]) -> Kind:
    key = (obj["apiVersion"], obj["kind"])
    if key not in KINDS:
        raise KeyError(f"no REST mapping for {key}")
    return KINDS[key]


def load_api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """In-cluster service account when running in a pod, else the kubeconfig."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class KubeClient:
    def __init__(self, api: k8s.ApiClient, *, timeout: float = 30.0) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.timeout = timeout
        self._watch: Any = None

    def interrupt(self) -> None:
        """Unblock a watch being read in another thread (shutdown)."""
        w = self._watch
        if w is not None:
            w.stop()
            resp = getattr(w, "_resp", None)
            if resp is not None:
                with contextlib.suppress(Exception):
                    resp.shutdown() if hasattr(resp, "shutdown") else resp.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=self.timeout
        )
        data = resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp)
        return json.loads(data) if data else None

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        kind = kind_of(obj)
        meta = obj["metadata"]
        result: dict[str, Any] = self._call(
            "PATCH",
            kind.item(meta["namespace"], meta["name"]),
            query=[("fieldManager", field_manager), ("force", "true")],
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
        )
        return result

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> dict[str, Any]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result: dict[str, Any] = self._call("GET", kind.collection(namespace), query=query)
        return result

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self._call(
            "DELETE",
            kind.item(namespace, name),
            body={"propagationPolicy": "Background"},
            content_type="application/json",
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "PATCH",
            MODELSERVICE.item(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def watch_modelservices(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        self._watch = w
        group, version = API_GROUP, API_VERSION
        if namespace is None:
            func: Any = self.custom.list_cluster_custom_object
            args: tuple[Any, ...] = (group, version, MODELSERVICE.plural)
        else:
            func = self.custom.list_namespaced_custom_object
            args = (group, version, namespace, MODELSERVICE.plural)
        try:
            yield from w.stream(  # type: ignore[no-untyped-call]
                func,
                *args,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True,
            )
        finally:
            w.stop()  # type: ignore[no-untyped-call]
            self._watch = None
