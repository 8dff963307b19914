"""The endpoint registry's watch semantics (snapshot, bookmarks, resume, overflow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmd_modelservice.registry import Endpoint, EndpointEvent, Registry


def ep(i: int, model: str = "m", state: str = "ready") -> Endpoint:
    return Endpoint(
        id=f"{model}-{i}",
        model=model,
        address="127.0.0.1",
        port=8200 + i,
        engine="sim",
        state=state,  # type: ignore[arg-type]
    )


async def take(it: AsyncIterator[EndpointEvent], n: int) -> list[EndpointEvent]:
    return [await asyncio.wait_for(anext(it), 2) for _ in range(n)]


def brief(events: list[EndpointEvent]) -> list[str]:
    return [
        f"{e.type}:{e.endpoint.id}:{e.endpoint.state}" if e.endpoint else f"{e.type}:{e.synced}"
        for e in events
    ]


async def test_snapshot_then_synced_bookmark_then_live_events() -> None:
    reg = Registry()
    reg.upsert(ep(0))
    reg.upsert(ep(1))
    it = reg.watch(heartbeat=60)
    assert brief(await take(it, 3)) == ["ADDED:m-0:ready", "ADDED:m-1:ready", "BOOKMARK:True"]
    reg.upsert(ep(1, state="draining"))
    reg.remove("m-1")
    reg.remove("m-1")  # already gone: no event
    reg.upsert(ep(0))  # unchanged: no event
    reg.upsert(ep(2))
    events = await take(it, 3)
    assert brief(events) == ["MODIFIED:m-1:draining", "DELETED:m-1:draining", "ADDED:m-2:ready"]
    assert [e.revision for e in events] == [3, 4, 5]
    assert reg.watcher_count == 1
    await it.aclose()
    assert reg.watcher_count == 0


async def test_model_filter_and_json_shape() -> None:
    reg = Registry()
    reg.upsert(ep(0, "a"))
    reg.upsert(ep(0, "b"))
    it = reg.watch(model="b", heartbeat=60)
    events = await take(it, 2)
    assert brief(events) == ["ADDED:b-0:ready", "BOOKMARK:True"]
    reg.upsert(ep(1, "a"))
    reg.upsert(ep(1, "b"))
    (live,) = await take(it, 1)
    assert live.endpoint is not None and live.endpoint.id == "b-1"
    j = live.to_json()
    assert j["type"] == "ADDED" and j["revision"] == 4
    assert j["endpoint"]["address"] == "127.0.0.1" and j["endpoint"]["port"] == 8201
    assert events[1].to_json() == {"type": "BOOKMARK", "revision": 2, "synced": True}
    await it.aclose()


async def test_resume_since_replays_history_or_falls_back_to_snapshot() -> None:
    reg = Registry(history=3)
    for i in range(3):
        reg.upsert(ep(i))  # revisions 1..3
    it = reg.watch(since=2, heartbeat=60)
    assert brief(await take(it, 2)) == ["ADDED:m-2:ready", "BOOKMARK:True"]
    await it.aclose()
    reg.remove("m-0")  # rev 4; history now holds revisions 2..4
    reg.remove("m-1")  # rev 5; history 3..5
    it = reg.watch(since=1, heartbeat=60)  # too old: full snapshot
    assert brief(await take(it, 2)) == ["ADDED:m-2:ready", "BOOKMARK:True"]
    await it.aclose()
    it = reg.watch(since=5, heartbeat=60)  # up to date: nothing to replay
    assert brief(await take(it, 1)) == ["BOOKMARK:True"]
    await it.aclose()


async def test_idle_watch_gets_heartbeat_bookmarks() -> None:
    reg = Registry()
    it = reg.watch(heartbeat=0.05)
    first, second = await take(it, 2)
    assert first.type == "BOOKMARK" and first.synced
    assert second.type == "BOOKMARK" and not second.synced
    await it.aclose()


async def test_slow_watcher_is_told_to_reconnect() -> None:
    reg = Registry(queue_size=2)
    it = reg.watch(heartbeat=60)
    await take(it, 1)  # the synced bookmark; now the queue exists
    for i in range(5):
        reg.upsert(ep(i))
    (event,) = await take(it, 1)
    assert event.type == "ERROR" and "reconnect" in (event.message or "")
    assert reg.watcher_count == 0
    assert len(reg.endpoints()) == 5, "the registry itself is unaffected"


async def test_listeners_see_every_change() -> None:
    reg = Registry()
    seen: list[str] = []
    reg.add_listener(lambda e: seen.append(e.type))
    reg.upsert(ep(0))
    reg.upsert(ep(0, state="draining"))
    reg.remove("m-0")
    assert seen == ["ADDED", "MODIFIED", "DELETED"]
