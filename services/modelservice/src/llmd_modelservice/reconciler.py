"""The Kubernetes reconcile loop: ModelService objects in, rendered objects applied, status out.

List, then watch from the list's resourceVersion; reconcile on ADDED and on MODIFIED when the
generation moved (our own status writes do not re-trigger work); relist every `resyncSeconds`
to refresh readiness and repair drift; relist on `410 Gone`. Each reconcile renders the spec
(exactly what `render` prints), server-side applies every object with an owner reference to the
ModelService (so deleting it garbage-collects them), deletes objects it labelled earlier but no
longer renders, and writes `status` with `Reconciled` and `Available` conditions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from kubernetes.client.exceptions import ApiException

from llmd_modelservice.kube import KINDS, MODELSERVICE, Kind, kind_of
from llmd_modelservice.metrics import ReconcilerMetrics
from llmd_modelservice.planner import PlanError
from llmd_modelservice.render import MANAGED_BY, render
from llmd_modelservice.spec import API_GROUP, API_VERSION
from llmd_modelservice.validation import SpecError, parse_model_service

log = structlog.get_logger("llmd_modelservice.reconciler")

WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")


class KubeAPI(Protocol):
    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]: ...
    def list(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> dict[str, Any]: ...
    def delete(self, kind: Kind, namespace: str, name: str) -> None: ...
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...
    def watch_modelservices(
        self, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Any: ...
    def interrupt(self) -> None: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    old: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, gen: int | None
) -> dict[str, Any]:
    """A metav1.Condition keeping lastTransitionTime while the status does not change."""
    prev = next((c for c in old if c.get("type") == type_), None)
    since = _now()
    if prev is not None and prev.get("status") == status:
        since = prev.get("lastTransitionTime", since)
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": since,
    }
    if gen is not None:
        cond["observedGeneration"] = gen
    return cond


def _api_error(exc: ApiException) -> str:
    return f"{exc.status} {exc.reason}".strip()


class Reconciler:
    def __init__(
        self,
        api: KubeAPI,
        *,
        namespace: str | None = None,
        field_manager: str = "llmd-modelservice",
        resync_seconds: float = 60.0,
        kvmanager_endpoint: str | None = None,
        watch_timeout_seconds: int = 30,
        metrics: ReconcilerMetrics | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.field_manager = field_manager
        self.resync_seconds = resync_seconds
        self.kvmanager_endpoint = kvmanager_endpoint
        self.watch_timeout_seconds = watch_timeout_seconds
        self.metrics = metrics or ReconcilerMetrics()
        self.on_synced = on_synced
        self._done_generation: dict[tuple[str, str], int | None] = {}

    # -- one object -------------------------------------------------------------------------

    def reconcile(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Apply what the spec renders; return the status written."""
        with self.metrics.duration.time():
            status = self._reconcile(obj)
        reconciled = next(c for c in status["conditions"] if c["type"] == "Reconciled")
        result = {"Applied": "applied", "InvalidSpec": "invalid_spec"}.get(
            reconciled["reason"], "apply_failed"
        )
        self.metrics.reconciles.labels(result).inc()
        return status

    def _reconcile(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata", {})
        ns, name = meta.get("namespace", "default"), meta["name"]
        gen = meta.get("generation")
        old_conditions = (obj.get("status") or {}).get("conditions", [])
        key = (ns, name)
        try:
            ms = parse_model_service(obj, source=f"{ns}/{name}")
            objects = render(ms, kvmanager_endpoint=self.kvmanager_endpoint)
        except (SpecError, PlanError) as exc:
            message = "; ".join(exc.errors) if isinstance(exc, SpecError) else str(exc)
            log.warning("invalid ModelService", namespace=ns, name=name, error=message)
            status = {
                "observedGeneration": gen,
                "conditions": [
                    _condition(old_conditions, "Reconciled", "False", "InvalidSpec", message, gen)
                ],
            }
            self._write_status(ns, name, status)
            self._done_generation[key] = gen
            return status
        owner = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "ModelService",
            "name": name,
            "uid": meta.get("uid", ""),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        applied: list[dict[str, Any]] = []
        errors: list[str] = []
        for o in objects:
            o["metadata"]["ownerReferences"] = [owner]
            try:
                applied.append(self.api.apply(o, self.field_manager))
            except ApiException as exc:
                errors.append(f"{o['kind']}/{o['metadata']['name']}: {_api_error(exc)}")
        if not errors:
            errors += self._prune(ns, name, objects)
        desired = sum(g.replicas for g in ms.groups())
        ready = 0
        for a in applied:
            if a.get("kind") in WORKLOAD_KINDS:
                ready += int((a.get("status") or {}).get("readyReplicas") or 0)
        conditions = [
            _condition(
                old_conditions,
                "Reconciled",
                "False" if errors else "True",
                "ApplyFailed" if errors else "Applied",
                "; ".join(errors) if errors else f"applied {len(applied)} objects",
                gen,
            ),
            _condition(
                old_conditions,
                "Available",
                "True" if ready >= desired else "False",
                "ReplicasReady" if ready >= desired else "ReplicasNotReady",
                f"{ready}/{desired} replicas ready",
                gen,
            ),
        ]
        status = {
            "observedGeneration": gen,
            "replicas": desired,
            "readyReplicas": ready,
            "selector": f"llm-d.ai/model={ms.name}",
            "conditions": conditions,
        }
        self._write_status(ns, name, status)
        self._done_generation[key] = gen if not errors else None
        log.info("reconciled", namespace=ns, name=name, objects=len(applied), errors=len(errors))
        return status

    def _prune(self, ns: str, name: str, objects: list[dict[str, Any]]) -> list[str]:
        """Delete objects labelled as ours for this ModelService that are no longer rendered."""
        keep = {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects}
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY},llm-d.ai/modelservice={name}"
        errors = []
        rendered_kinds = {kind_of(o) for o in objects}
        for kind in KINDS.values():
            try:
                items = self.api.list(kind, ns, selector).get("items", [])
            except ApiException as exc:
                if exc.status == 404 and kind not in rendered_kinds:
                    continue  # that API (e.g. LeaderWorkerSet) is not installed here
                errors.append(f"list {kind.plural}: {_api_error(exc)}")
                continue
            for item in items:
                item_name = item["metadata"]["name"]
                if (kind.api_version, kind.kind, item_name) in keep:
                    continue
                try:
                    self.api.delete(kind, ns, item_name)
                    log.info("pruned", kind=kind.kind, name=item_name, namespace=ns)
                except ApiException as exc:
                    if exc.status != 404:
                        errors.append(f"delete {kind.kind}/{item_name}: {_api_error(exc)}")
        return errors

    def _write_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.api.patch_status(ns, name, status)
        except ApiException as exc:
            log.warning("status update failed", namespace=ns, name=name, error=_api_error(exc))

    # -- the loop ---------------------------------------------------------------------------

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            raise ApiException(status=code or 500, reason=obj.get("message", "watch error"))
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", "default"), meta.get("name", ""))
        if kind == "DELETED":
            self._done_generation.pop(key, None)
            log.info("ModelService deleted; owned objects are garbage-collected", name=key[1])
            return
        if kind == "MODIFIED" and self._done_generation.get(key) == meta.get("generation"):
            return  # our own status write, or a metadata-only change
        self.reconcile(obj)

    def sync_all(self) -> str:
        """Reconcile every ModelService; returns the list's resourceVersion."""
        listing = self.api.list(MODELSERVICE, self.namespace)
        for item in listing.get("items", []):
            item.setdefault("apiVersion", f"{API_GROUP}/{API_VERSION}")
            item.setdefault("kind", "ModelService")
            self.reconcile(item)
        self.metrics.relists.inc()
        if self.on_synced is not None:
            self.on_synced()
        rv: str = listing.get("metadata", {}).get("resourceVersion", "")
        return rv

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                rv = self.sync_all()
                next_resync = time.monotonic() + self.resync_seconds
                while not stop.is_set() and time.monotonic() < next_resync:
                    for event in self.api.watch_modelservices(
                        self.namespace, rv, self.watch_timeout_seconds
                    ):
                        if stop.is_set():
                            return
                        self.handle_event(event)
                        new_rv = (
                            (event.get("object") or {}).get("metadata", {}).get("resourceVersion")
                        )
                        rv = new_rv or rv
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired (410 Gone); relisting")
                    continue
                log.error("kubernetes API error; retrying", error=_api_error(exc))
                stop.wait(5.0)
            except Exception as exc:  # keep the controller alive; the next relist repairs
                if stop.is_set():
                    return
                log.error("reconcile loop error; retrying", error=repr(exc))
                stop.wait(5.0)
