"""The endpoint registry: healthy replicas the EPP may route to, and a watch of its changes.

Semantics follow a Kubernetes watch. Every change bumps a revision. A watcher first receives
the current endpoints as `ADDED` events, then a `BOOKMARK` with `"synced": true`, then live
`ADDED` / `MODIFIED` / `DELETED` events, and a `BOOKMARK` heartbeat when idle. A watcher that
passes `since=<revision>` resumes from history when it still holds that revision, otherwise it
gets the full snapshot again. A watcher too slow to keep up gets an `ERROR` event and is closed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
EndpointState = Literal["ready", "draining"]


class Endpoint(BaseModel):
    """One routable replica. `address:port` is what the EPP puts in
    `x-gateway-destination-endpoint`."""

    model_config = ConfigDict(frozen=True)

    id: str
    model: str
    namespace: str = "default"
    role: str = "both"
    address: str
    port: int
    state: EndpointState = "ready"
    engine: str
    served_names: list[str] = Field(default_factory=list)
    loras: list[str] = Field(default_factory=list)
    metrics_path: str = "/metrics"
    kv_topic: str | None = None
    kv_events_endpoint: str | None = None
    hash_algo: str = "sha256"
    hash_seed: str | None = None
    block_size: int = 16
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class EndpointEvent:
    type: EventType
    revision: int
    endpoint: Endpoint | None = None
    synced: bool = False
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "revision": self.revision}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint.model_dump(mode="json")
        if self.type == "BOOKMARK":
            out["synced"] = self.synced
        if self.message is not None:
            out["message"] = self.message
        return out


class Registry:
    """In-memory endpoint set with revisioned history and fan-out to watchers."""

    def __init__(self, *, history: int = 4096, queue_size: int = 4096) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._revision = 0
        self._history: collections.deque[EndpointEvent] = collections.deque(maxlen=history)
        self._watchers: set[asyncio.Queue[EndpointEvent | None]] = set()
        self._queue_size = queue_size
        self._listeners: list[Callable[[EndpointEvent], None]] = []

    def add_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        """Called synchronously with every change (metrics, logs)."""
        self._listeners.append(fn)

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(endpoint_id)

    def endpoints(self, model: str | None = None) -> list[Endpoint]:
        return [e for e in self._endpoints.values() if model is None or e.model == model]

    def upsert(self, ep: Endpoint) -> EndpointEvent | None:
        old = self._endpoints.get(ep.id)
        if old == ep:
            return None
        self._endpoints[ep.id] = ep
        return self._emit("ADDED" if old is None else "MODIFIED", ep)

    def remove(self, endpoint_id: str) -> EndpointEvent | None:
        ep = self._endpoints.pop(endpoint_id, None)
        if ep is None:
            return None
        return self._emit("DELETED", ep)

    def _emit(self, kind: EventType, ep: Endpoint) -> EndpointEvent:
        self._revision += 1
        event = EndpointEvent(kind, self._revision, ep)
        self._history.append(event)
        for fn in self._listeners:
            fn(event)
        for q in list(self._watchers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                # Unblock the watcher with a sentinel; it reports the overflow and ends.
                self._watchers.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)
        return event

    def _replay(self, since: int) -> list[EndpointEvent] | None:
        if since == self._revision:
            return []
        if not self._history or since < self._history[0].revision - 1 or since > self._revision:
            return None
        return [e for e in self._history if e.revision > since]

    async def watch(
        self,
        *,
        model: str | None = None,
        since: int | None = None,
        heartbeat: float = 15.0,
    ) -> AsyncIterator[EndpointEvent]:
        """Snapshot (or replay from `since`), a synced bookmark, then live events."""
        q: asyncio.Queue[EndpointEvent | None] = asyncio.Queue(self._queue_size)
        self._watchers.add(q)
        try:
            replay = self._replay(since) if since is not None else None
            if replay is None:
                initial = [
                    EndpointEvent("ADDED", self._revision, ep) for ep in self._endpoints.values()
                ]
            else:
                initial = replay
            for event in initial:
                if model is None or (event.endpoint and event.endpoint.model == model):
                    yield event
            yield EndpointEvent("BOOKMARK", self._revision, synced=True)
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), timeout=heartbeat)
                except TimeoutError:
                    yield EndpointEvent("BOOKMARK", self._revision)
                    continue
                if item is None:
                    yield EndpointEvent(
                        "ERROR", self._revision, message="watcher fell behind; reconnect"
                    )
                    return
                if model is None or (item.endpoint and item.endpoint.model == model):
                    yield item
        finally:
            self._watchers.discard(q)
