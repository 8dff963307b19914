"""Endpoints from Kubernetes: the ready Pods selected by an InferencePool.

The pool (`inference.networking.k8s.io/v1`, falling back to `inference.networking.x-k8s.io/
v1alpha2`) gives the Pod selector and target port(s); each ready Pod with an IP becomes one
endpoint per target port (data-parallel ranks in port order). Pods are watched with the
`kubernetes` client in a worker thread; events are handed to the event loop, and every
(re)list replaces the whole view so nothing stale survives a dropped watch.

A watch ends routinely: its timeout, or `410 Gone` once the API server has compacted the resource
version it resumes from. Either, and any failed pool read, list or watch call (the pool not created
yet, the API server restarting), leads to a fresh list, after a capped backoff for errors, rather
than ending the source: endpoints keep following the pods. Only a bad kubeconfig is fatal.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Mapping
from typing import Any

from llmd_sdk.telemetry import get_logger

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.scheduling.types import Endpoint

SOURCE = "kubernetes"
log = get_logger("llmd_epp.datalayer.kubernetes")
# The pod watch and the objectives poll run in two threads; importing the `kubernetes` package
# from both at once can end in Python's import deadlock detection (`_DeadlockError`), so the
# first import and the client construction happen under one lock.
_CLIENT_LOCK = threading.Lock()
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 10.0
POOL_GROUPS = (("inference.networking.k8s.io", "v1"), ("inference.networking.x-k8s.io", "v1alpha2"))


def pool_selector_and_ports(pool: Mapping[str, Any]) -> tuple[dict[str, str], list[int]]:
    """(label selector, target ports) of an InferencePool object, v1 or v1alpha2."""
    spec = pool.get("spec") or {}
    selector = spec.get("selector") or {}
    if isinstance(selector.get("matchLabels"), dict):
        labels = {str(k): str(v) for k, v in selector["matchLabels"].items()}
    else:
        labels = {str(k): str(v) for k, v in selector.items() if isinstance(v, str)}
    ports = [int(p["number"]) for p in spec.get("targetPorts") or [] if "number" in p]
    if not ports and spec.get("targetPortNumber"):
        ports = [int(spec["targetPortNumber"])]
    if not labels or not ports:
        raise ValueError("InferencePool needs spec.selector and spec.targetPorts")
    return labels, ports


def pod_endpoints(pod: Mapping[str, Any], ports: list[int]) -> list[Endpoint]:
    """The endpoints of a Pod dict (API JSON), or none when it is not ready to serve."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return []
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not ip or not ready:
        return []
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    host = f"[{ip}]" if ":" in ip else ip
    return [
        Endpoint(key=f"{host}:{port}", address=ip, port=port, labels=labels, name=name, rank=i)
        for i, port in enumerate(ports)
    ]


OBJECTIVE_GROUPS = (
    ("inference.networking.x-k8s.io", "v1alpha2"),
    ("inference.networking.k8s.io", "v1alpha1"),
)


def pool_objectives(items: list[Mapping[str, Any]], pool_name: str) -> dict[str, int]:
    """name -> priority of the InferenceObjectives that reference `pool_name`."""
    out: dict[str, int] = {}
    for obj in items:
        spec = obj.get("spec") or {}
        ref = (spec.get("poolRef") or {}).get("name")
        name = (obj.get("metadata") or {}).get("name")
        if name and (ref is None or ref == pool_name):
            prio = spec.get("priority", 0)
            out[str(name)] = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0
    return out


def selector_string(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class KubernetesSource:
    """Watches the pool's Pods; needs in-cluster config or a kubeconfig."""

    def __init__(self, pool_name: str, namespace: str, kubeconfig: str = "") -> None:
        self.pool_name = pool_name
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self._stop = threading.Event()
        self._api: tuple[Any, Any] | None = None

    def _clients(self) -> tuple[Any, Any]:
        with _CLIENT_LOCK:
            return self._make_clients()

    def _make_clients(self) -> tuple[Any, Any]:
        # Imported here, under the lock, so that no other thread imports them concurrently.
        for module in ("kubernetes.client.exceptions", "kubernetes.watch"):
            importlib.import_module(module)
        from kubernetes import client as _client
        from kubernetes import config as _config

        if self._api is not None:
            return self._api
        client: Any = _client
        config: Any = _config
        api_client: Any
        if self.kubeconfig:
            try:
                api_client = config.new_client_from_config(config_file=self.kubeconfig)
            except (config.ConfigException, OSError) as exc:
                raise RuntimeError(f"--kubeconfig {self.kubeconfig}: {exc}") from None
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as exc:
                    raise RuntimeError(
                        f"no in-cluster service account and no usable ~/.kube/config: {exc}"
                    ) from None
            api_client = client.ApiClient()
        self._api = (client.CoreV1Api(api_client), client.CustomObjectsApi(api_client))
        return self._api

    def read_pool(self, custom: Any) -> tuple[dict[str, str], list[int]]:
        from kubernetes.client.exceptions import ApiException

        last: Exception | None = None
        for group, version in POOL_GROUPS:
            try:
                obj = custom.get_namespaced_custom_object(
                    group, version, self.namespace, "inferencepools", self.pool_name
                )
                return pool_selector_and_ports(obj)
            except ApiException as exc:
                last = exc
        raise RuntimeError(f"InferencePool {self.namespace}/{self.pool_name} not readable: {last}")

    async def run(self, store: Datastore) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def deliver(fn: Any, *args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def worker() -> None:
            try:
                self._watch(store, deliver)
            except BaseException as exc:  # surfaced to the awaiting task
                loop.call_soon_threadsafe(settle, exc)
            else:
                loop.call_soon_threadsafe(settle, None)

        thread = threading.Thread(target=worker, name="k8s-pod-watch", daemon=True)
        thread.start()
        try:
            await done
        finally:
            self._stop.set()

    async def run_objectives(self, objectives: Any, interval: float = 10.0) -> None:
        """Keep `objectives` (an `Objectives`) in step with the pool's InferenceObjectives."""
        while not self._stop.is_set():
            try:
                found = await asyncio.to_thread(self._list_objectives)
            except Exception:
                found = None  # CRD absent or no RBAC: keep what we have
            if found is not None:
                objectives.priorities = found
            await asyncio.sleep(interval)

    def _list_objectives(self) -> dict[str, int] | None:
        _, custom = self._clients()
        from kubernetes.client.exceptions import ApiException

        for group, version in OBJECTIVE_GROUPS:
            try:
                listed = custom.list_namespaced_custom_object(
                    group, version, self.namespace, "inferenceobjectives"
                )
            except ApiException:
                continue
            return pool_objectives(listed.get("items") or [], self.pool_name)
        return None

    def _watch(self, store: Datastore, deliver: Any) -> None:
        core, custom = self._clients()
        from kubernetes import watch as _watch
        from kubernetes.client.exceptions import ApiException

        watch: Any = _watch
        failures = 0
        while not self._stop.is_set():
            try:
                # Read the pool on every (re)list: it may not exist yet at start-up, and its
                # selector or ports may have changed while the watch was down.
                labels, ports = self.read_pool(custom)
                self._list_and_watch(store, core, watch, selector_string(labels), ports, deliver)
                failures = 0  # the watch timed out: relist at once
            except ApiException as exc:
                if exc.status == 410:  # resource version compacted away: relist at once
                    failures = 0
                    log.info("pod watch expired; relisting", pool=self.pool_name)
                    continue
                failures += 1
                self._back_off(failures, f"{exc.status} {exc.reason}")
            except Exception as exc:  # no pool yet, connection refused, API server restarting
                failures += 1
                self._back_off(failures, str(exc) or type(exc).__name__)

    def _back_off(self, failures: int, error: str) -> None:
        delay = min(RETRY_INITIAL_S * 2 ** (failures - 1), RETRY_MAX_S)
        log.warning(
            "pod list/watch failed; relisting",
            pool=self.pool_name,
            error=error.splitlines()[0] if error else "",
            failures=failures,
            retry_in_s=delay,
        )
        self._stop.wait(delay)

    def _list_and_watch(
        self,
        store: Datastore,
        core: Any,
        watch: Any,
        selector: str,
        ports: list[int],
        deliver: Any,
    ) -> None:
        """One list (replacing the whole view), then its watch until it ends."""
        listed = core.list_namespaced_pod(self.namespace, label_selector=selector)
        pods = [core.api_client.sanitize_for_serialization(p) for p in listed.items]
        eps = [ep for pod in pods for ep in pod_endpoints(pod, ports)]
        deliver(store.replace, eps, SOURCE)
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=300,
        ):
            if self._stop.is_set():
                w.stop()
                return
            pod = core.api_client.sanitize_for_serialization(event["object"])
            kind = event["type"]
            ip = (pod.get("status") or {}).get("podIP")
            current = pod_endpoints(pod, ports) if kind != "DELETED" else []
            if current:
                for ep in current:
                    deliver(store.upsert, ep, SOURCE)
            elif ip:
                host = f"[{ip}]" if ":" in ip else ip
                for port in ports:
                    deliver(store.remove, f"{host}:{port}")
