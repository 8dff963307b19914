"""Pool membership from modelservice's endpoint watch (``GET /v1/endpoints/watch``, NDJSON).

- ``ADDED`` / ``MODIFIED`` (ready or draining): the engine is in the pool. When its KV events
  bind (``kv_events_endpoint`` set) kvmanager connects to it; otherwise it publishes to our bound
  socket and is admitted. A model not configured here gets a token-ids keyer with the engine's
  ``hash_algo``, ``hash_seed`` and ``block_size``; a configured one that disagrees is logged.
- ``DELETED``: the engine left the pool: unsubscribed and purged.
- A ``BOOKMARK`` with ``synced: true`` ends a full snapshot: engines we follow that it did not
  list are gone (they left while we were disconnected) and are purged too.
- The stream is resumed with ``since=<revision>`` after a disconnect, with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
from llmd_sdk.kvcache.subscriber import EngineSource
from llmd_sdk.telemetry import get_logger

from llmd_kvmanager.config import ModelConfig
from llmd_kvmanager.manager import KVManager, build_keyer

log = get_logger("llmd_kvmanager.pool")


class PoolWatcher:
    """Follows one modelservice watch stream and keeps the manager's pool in step."""

    def __init__(
        self,
        manager: KVManager,
        url: str,
        model: str | None = None,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.m = manager
        self.url = url.rstrip("/")
        self.model = model
        self.max_backoff_s = max_backoff_s
        self.revision: int | None = None
        self.synced = asyncio.Event()
        self.members: dict[str, str] = {}  # modelservice endpoint id -> our endpoint "ip:port"
        self._snapshot: set[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pool-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
            while True:
                params: dict[str, Any] = {}
                if self.model:
                    params["model"] = self.model
                if self.revision is not None:
                    params["since"] = self.revision
                try:
                    async with http.stream(
                        "GET", f"{self.url}/v1/endpoints/watch", params=params
                    ) as resp:
                        resp.raise_for_status()
                        self._snapshot = set()
                        async for line in resp.aiter_lines():
                            if line.strip():
                                await self.handle(json.loads(line))
                                backoff = 0.1
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("modelservice watch interrupted", url=self.url, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    async def handle(self, event: dict[str, Any]) -> None:
        """Apply one watch event (public for tests and replays)."""
        kind = event.get("type")
        if isinstance(event.get("revision"), int):
            self.revision = event["revision"]
        if kind in ("ADDED", "MODIFIED"):
            await self._upsert(event["endpoint"])
        elif kind == "DELETED":
            await self._delete(event["endpoint"])
        elif kind == "BOOKMARK" and event.get("synced"):
            if self._snapshot is not None:
                for ep_id in [i for i in self.members if i not in self._snapshot]:
                    await self._delete({"id": ep_id})
            self._snapshot = None
            self.synced.set()
        elif kind == "ERROR":
            log.warning("modelservice watch error", message=event.get("message"))
            self.revision = None  # start over with a full snapshot

    async def _upsert(self, ep: dict[str, Any]) -> None:
        ep_id = str(ep["id"])
        endpoint = f"{ep['address']}:{ep['port']}"
        if self._snapshot is not None:
            self._snapshot.add(ep_id)
        names = ep.get("served_names") or [ep.get("model")]
        model = str(names[0])
        self._check_hashing(model, ep)
        known = self.members.get(ep_id)
        if known == endpoint:
            return
        if known is not None:
            await self.m.remove_engine(known)
        self.members[ep_id] = endpoint
        address = ep.get("kv_events_endpoint")
        if address:
            await self.m.subscriber.add_engine(EngineSource(endpoint, str(address), model))
            self.m.metrics.engines.set(len(self.m.subscriber.engines))
        else:
            self.m.admit(endpoint)
        log.info("engine joined", endpoint=endpoint, model=model, connect=address)

    async def _delete(self, ep: dict[str, Any]) -> None:
        endpoint = self.members.pop(str(ep["id"]), None)
        if endpoint is None and "address" in ep:
            endpoint = f"{ep['address']}:{ep['port']}"
        if endpoint is not None:
            await self.m.remove_engine(endpoint)
            log.info("engine left", endpoint=endpoint)

    def _check_hashing(self, model: str, ep: dict[str, Any]) -> None:
        algo = str(ep.get("hash_algo") or "sha256")
        seed = ep.get("hash_seed")
        block_size = int(ep.get("block_size") or 16)
        keyers = self.m.indexer.keyers
        configured = self.m.config.model(model)
        if configured is None and model not in keyers:
            spec = ModelConfig(
                name=model,
                hash_algo=algo,
                hash_seed=None if seed is None else str(seed),
                block_size=block_size,
            )
            keyers[model] = build_keyer(spec, None)
            return
        if configured is not None and (
            configured.hash_algo != algo
            or configured.block_size != block_size
            or (seed is not None and configured.hash_seed != str(seed))
        ):
            log.warning(
                "engine hashes differently than configured",
                model=model,
                engine={"hash_algo": algo, "hash_seed": seed, "block_size": block_size},
                configured={
                    "hash_algo": configured.hash_algo,
                    "hash_seed": configured.hash_seed,
                    "block_size": configured.block_size,
                },
            )
