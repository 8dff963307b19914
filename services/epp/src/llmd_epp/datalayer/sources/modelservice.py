"""Endpoints from modelservice's registry in local mode: its HTTP watch stream.

`GET {base}/v1/endpoints/watch[?model=NAME]` answers newline-delimited JSON, one event per line
(the format modelservice documents; Kubernetes watch semantics):

    {"type": "ADDED" | "MODIFIED" | "DELETED", "revision": 7, "endpoint": ENDPOINT}
    {"type": "BOOKMARK", "revision": 7, "synced": true}   end of the initial snapshot
    {"type": "BOOKMARK", "revision": 7}                   heartbeat
    {"type": "ERROR", "revision": 7, "message": "..."}    the server closes; reconnect

    ENDPOINT = {"id": "...", "model": "m", "role": "decode", "address": "127.0.0.1",
                "port": 8200, "state": "ready" | "draining", "engine": "sim",
                "labels": {"llm-d.ai/role": "decode", ...}, ...}

The snapshot before the synced bookmark replaces the whole view (so endpoints that vanished
while disconnected are dropped); a `draining` endpoint is treated as gone. When the stream
breaks the source reconnects with exponential backoff and takes a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import wait_exponential_jitter

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.extractor import DEFAULT_ENGINE_LABEL_KEY
from llmd_epp.scheduling.types import Endpoint

SOURCE = "modelservice"
# Engines whose metrics are not vLLM's (vllm-sim speaks vLLM's names).
_ENGINE_METRICS = {"sglang": "sglang", "trtllm": "trtllm-serve", "trtllm-serve": "trtllm-serve"}


class WatchedEndpoint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = ""
    model: str = ""
    role: str = ""
    address: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    state: str = "ready"
    engine: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    def endpoint(self) -> Endpoint:
        host = f"[{self.address}]" if ":" in self.address else self.address
        labels = dict(self.labels)
        if self.role and "llm-d.ai/role" not in labels:
            labels["llm-d.ai/role"] = self.role
        engine = _ENGINE_METRICS.get(self.engine)
        if engine and DEFAULT_ENGINE_LABEL_KEY not in labels:
            labels[DEFAULT_ENGINE_LABEL_KEY] = engine
        return Endpoint(
            key=f"{host}:{self.port}",
            address=self.address,
            port=self.port,
            labels=labels,
            name=self.id,
        )


class _Attempt:
    def __init__(self, n: int) -> None:
        self.attempt_number = n


class ModelServiceSource:
    def __init__(self, base_url: str, model: str = "", max_backoff: float = 5.0) -> None:
        self.url = base_url.rstrip("/") + "/v1/endpoints/watch"
        self.params = {"model": model} if model else {}
        self._wait: Any = wait_exponential_jitter(multiplier=0.1, max=max_backoff, jitter=0.1)
        self.events = 0
        self.reconnects = 0
        self.revision = 0
        self.synced = asyncio.Event()
        self._snapshot: dict[str, Endpoint] | None = None

    def reset(self) -> None:
        """A new connection: the events up to the synced bookmark are a full snapshot."""
        self._snapshot = {}

    def apply(self, store: Datastore, event: dict[str, Any]) -> bool:
        """One watch event into the datastore; False when the server asks us to reconnect."""
        kind = str(event.get("type", "")).upper()
        rev = event.get("revision")
        if isinstance(rev, int):
            self.revision = rev
        if kind == "ERROR":
            return False
        if kind == "BOOKMARK":
            if event.get("synced") and self._snapshot is not None:
                store.replace(self._snapshot.values(), SOURCE)
                self._snapshot = None
                self.synced.set()
            return True
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return True
        try:
            we = WatchedEndpoint.model_validate(event.get("endpoint") or {})
        except ValidationError:
            return True
        self.events += 1
        ep = we.endpoint()
        gone = kind == "DELETED" or we.state != "ready"
        if self._snapshot is not None:  # still in the initial snapshot
            if gone:
                self._snapshot.pop(ep.key, None)
            else:
                self._snapshot[ep.key] = ep
        elif gone:
            store.remove(ep.key)
        else:
            store.upsert(ep, SOURCE)
        return True

    async def run(self, store: Datastore) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client:
            while True:
                try:
                    async with client.stream("GET", self.url, params=self.params) as resp:
                        resp.raise_for_status()
                        attempt = 0
                        self.reset()
                        async for line in resp.aiter_lines():
                            line = line.strip()
                            if not line:
                                continue
                            try:
                                event = json.loads(line)
                            except ValueError:
                                continue
                            if isinstance(event, dict) and not self.apply(store, event):
                                break
                except asyncio.CancelledError:
                    raise
                except (httpx.HTTPError, OSError):
                    pass
                attempt += 1
                self.reconnects += 1
                await asyncio.sleep(float(self._wait(_Attempt(attempt))))
