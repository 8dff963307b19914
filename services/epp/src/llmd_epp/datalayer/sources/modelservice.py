"""Endpoints from modelservice's registry in local mode: an HTTP watch stream.

`GET {base}/v1/endpoints?watch=true[&pool=NAME]` answers newline-delimited JSON (server-sent
events' `data: {...}` lines are read the same way), one event per line:

    {"type": "SYNC", "endpoints": [ENDPOINT, ...]}   the full current set (first, and on resync)
    {"type": "ADDED" | "MODIFIED" | "DELETED", "endpoint": ENDPOINT}
    {"type": "HEARTBEAT"}

    ENDPOINT = {"address": "127.0.0.1", "port": 8200, "name": "sim-0", "model": "m",
                "labels": {"llm-d.ai/role": "decode"}, "ready": true}

An endpoint that is not `ready` is treated as absent. When the stream breaks the source
reconnects with exponential backoff and the next SYNC replaces what it had.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import wait_exponential_jitter

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.scheduling.types import Endpoint

SOURCE = "modelservice"


class WatchedEndpoint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    address: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    name: str = ""
    model: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    ready: bool = True
    rank: int = 0

    def endpoint(self) -> Endpoint:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return Endpoint(
            key=f"{host}:{self.port}",
            address=self.address,
            port=self.port,
            labels=dict(self.labels),
            name=self.name,
            rank=self.rank,
        )


class _Attempt:
    def __init__(self, n: int) -> None:
        self.attempt_number = n


class ModelServiceSource:
    def __init__(self, base_url: str, pool: str = "", max_backoff: float = 5.0) -> None:
        self.url = base_url.rstrip("/") + "/v1/endpoints"
        self.params = {"watch": "true", **({"pool": pool} if pool else {})}
        self._wait: Any = wait_exponential_jitter(initial=0.1, max=max_backoff, jitter=0.1)
        self.events = 0
        self.reconnects = 0
        self.connected = asyncio.Event()

    def apply(self, store: Datastore, event: dict[str, Any]) -> None:
        """One watch event into the datastore (malformed events are skipped)."""
        kind = str(event.get("type", "")).upper()
        try:
            if kind == "SYNC":
                eps = [WatchedEndpoint.model_validate(e) for e in event.get("endpoints") or []]
                store.replace([e.endpoint() for e in eps if e.ready], SOURCE)
            elif kind in ("ADDED", "MODIFIED", "DELETED"):
                we = WatchedEndpoint.model_validate(event.get("endpoint") or {})
                ep = we.endpoint()
                if kind == "DELETED" or not we.ready:
                    store.remove(ep.key)
                else:
                    store.upsert(ep, SOURCE)
            else:
                return
        except ValidationError:
            return
        self.events += 1

    async def run(self, store: Datastore) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client:
            while True:
                try:
                    async with client.stream("GET", self.url, params=self.params) as resp:
                        resp.raise_for_status()
                        attempt = 0
                        self.connected.set()
                        async for line in resp.aiter_lines():
                            line = line.strip()
                            if line.startswith("data:"):
                                line = line[5:].strip()
                            if not line or line.startswith(":"):
                                continue
                            try:
                                event = json.loads(line)
                            except ValueError:
                                continue
                            if isinstance(event, dict):
                                self.apply(store, event)
                except asyncio.CancelledError:
                    raise
                except (httpx.HTTPError, OSError):
                    pass
                self.connected.clear()
                attempt += 1
                self.reconnects += 1
                await asyncio.sleep(float(self._wait(_Attempt(attempt))))
