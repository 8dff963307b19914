"""The engines modelservice runs, read from its HTTP API (`GET /v1/models`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    model: str
    endpoint: str
    state: str
    pid: int | None
    restarts: int
    log: str

    @classmethod
    def from_status(cls, model: str, doc: dict[str, Any]) -> Replica:
        return cls(
            id=str(doc.get("id", "")),
            model=model,
            endpoint=str(doc.get("endpoint", "")),
            state=str(doc.get("state", "unknown")),
            pid=doc.get("pid"),
            restarts=int(doc.get("restarts") or 0),
            log=str(doc.get("log", "")),
        )


async def list_replicas(client: httpx.AsyncClient, base_url: str) -> list[Replica]:
    resp = await client.get(f"{base_url}/v1/models", timeout=5.0)
    resp.raise_for_status()
    out: list[Replica] = []
    for model in resp.json().get("models", []):
        for group in model.get("groups", []):
            for doc in group.get("replicas", []):
                out.append(Replica.from_status(str(model.get("name", "")), doc))
    return out


@dataclass(frozen=True, slots=True)
class ModelServiceProbe:
    """Ready when modelservice answers and every replica it plans is `ready`."""

    base_url: str

    async def check(self, client: httpx.AsyncClient) -> str | None:
        try:
            replicas = await list_replicas(client, self.base_url)
        except (httpx.HTTPError, ValueError) as exc:
            return type(exc).__name__
        if not replicas:
            return "no replicas yet"
        waiting = [r.id for r in replicas if r.state != "ready"]
        if waiting:
            return f"replicas not ready: {', '.join(waiting)}"
        return None

    def __str__(self) -> str:
        return f"GET {self.base_url}/v1/models (every replica ready)"
