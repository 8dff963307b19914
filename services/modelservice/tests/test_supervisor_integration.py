"""The local supervisor on real processes and sockets: start, crash, hang, give up, scale, drain.

Engines are `fake_engine.py` processes (a real HTTP server) until `llmd-sim` is on main; the
watch is read through the real HTTP API (uvicorn + FastAPI) with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmd_modelservice.replica import ReplicaState

pytestmark = pytest.mark.integration


def _records(state_dir: Path, port: int) -> list[dict[str, Any]]:
    path = state_dir / f"{port}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class WatchReader:
    """Reads the NDJSON watch stream in the background into a list of events."""

    def __init__(self, base_url: str, **params: Any) -> None:
        self.url = f"{base_url}/v1/endpoints/watch"
        self.params = params
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WatchReader:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", self.url, params=self.params) as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            async for line in resp.aiter_lines():
                if line.strip():
                    self.events.append(json.loads(line))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def of(self, endpoint_id: str) -> list[str]:
        return [
            f"{e['type']}:{e['endpoint']['state']}"
            for e in self.events
            if e.get("endpoint", {}).get("id") == endpoint_id
        ]

    @property
    def synced(self) -> bool:
        return any(e["type"] == "BOOKMARK" and e.get("synced") for e in self.events)


async def test_three_sim_replicas_come_up_healthy(
    no_orphans: None, fake_spec: Callable[..., Any], run_supervisor: Any, wait: Any
) -> None:
    sup = await run_supervisor(fake_spec("trio", replicas=3))
    replicas = sup.replicas("trio")
    await wait(lambda: all(r.state == ReplicaState.READY for r in replicas))

    endpoints = sup.registry.endpoints("trio")
    assert sorted(e.id for e in endpoints) == ["trio-0", "trio-1", "trio-2"]
    assert len({e.port for e in endpoints}) == 3, "each replica has its own port"
    async with httpx.AsyncClient() as client:
        for e in endpoints:
            assert (await client.get(f"http://{e.endpoint}/health")).status_code == 200
    # Every replica got the same hash seed and algorithm, and its own KV-event topic.
    starts = [_records(fake_spec.state_dir, e.port)[0] for e in endpoints]
    assert {s["env"]["PYTHONHASHSEED"] for s in starts} == {"42"}
    for s, e in zip(starts, endpoints, strict=True):
        argv = s["argv"]
        assert argv[argv.index("--prefix-caching-hash-algo") + 1] == "sha256"
        kv = json.loads(argv[argv.index("--kv-events-config") + 1])
        assert kv["topic"] == f"kv@127.0.0.1:{e.port}@trio"
        assert kv["endpoint"] == "tcp://127.0.0.1:5557"
    assert sup.ready()


async def test_killed_replica_comes_back_and_watch_shows_down_then_up(
    no_orphans: None,
    fake_spec: Callable[..., Any],
    run_supervisor: Any,
    api_server: Any,
    wait: Any,
) -> None:
    sup = await run_supervisor(fake_spec("crashy", replicas=3))
    await wait(lambda: len(sup.registry.endpoints()) == 3)
    victim = sup.replicas("crashy")[1]
    old_pid = victim.pid
    assert old_pid is not None

    async with api_server(sup) as base, WatchReader(base) as watch:
        await wait(lambda: watch.synced)
        assert watch.of("crashy-1") == ["ADDED:ready"]
        os.kill(old_pid, signal.SIGKILL)
        await wait(lambda: watch.of("crashy-1") == ["ADDED:ready", "DELETED:ready", "ADDED:ready"])

        assert victim.pid not in (None, old_pid)
        assert victim.restarts == 1
        assert "exited with code -9" in (victim.last_error or "")
        async with httpx.AsyncClient() as client:
            model = (await client.get(f"{base}/v1/models/crashy")).json()
            states = {r["id"]: r for r in model["groups"][0]["replicas"]}
            assert states["crashy-1"]["state"] == "ready"
            assert states["crashy-1"]["restarts"] == 1
            metrics = (await client.get(f"{base}/metrics")).text
        assert 'llmd_modelservice_replica_restarts_total{model="crashy",reason="crash"} 1.0' in (
            metrics
        )
        # The other replicas never left the registry.
        assert watch.of("crashy-0") == ["ADDED:ready"]
        assert watch.of("crashy-2") == ["ADDED:ready"]


async def test_hung_replica_is_killed_and_restarted(
    no_orphans: None, fake_spec: Callable[..., Any], run_supervisor: Any, wait: Any
) -> None:
    sup = await run_supervisor(fake_spec("hang", replicas=1, health={"timeoutSeconds": 0.2}))
    (r,) = sup.replicas("hang")
    await wait(lambda: r.state == ReplicaState.READY)
    pid = r.pid
    async with httpx.AsyncClient() as client:
        await client.post(f"{r.base_url}/control", json={"health": "hang"})
    await wait(lambda: r.restarts == 1 and r.state == ReplicaState.READY and r.pid != pid)
    assert "timed out" in (r.last_error or "")


async def test_replica_failing_health_repeatedly_is_given_up_and_reported(
    no_orphans: None,
    fake_spec: Callable[..., Any],
    run_supervisor: Any,
    api_server: Any,
    wait: Any,
) -> None:
    # Healthy for one probe, then failing: every start ends in `unhealthy`.
    spec = fake_spec(
        "flaky",
        replicas=2,
        env={"FAKE_ENGINE_FAIL_AFTER": "1"},
        restart={"maxFailures": 3, "windowSeconds": 60},
    )
    sup = await run_supervisor(spec)
    runners = sup.replicas("flaky")
    await wait(lambda: all(r.state == ReplicaState.FAILED for r in runners))

    for r in runners:
        assert r.recent_failures() == 3
        assert r.restarts == 2, "three starts: the first and two restarts, then give up"
        assert r.pid is None, "a given-up replica leaves no process behind"
        assert "failed health checks" in (r.last_error or "")
    assert sup.registry.endpoints("flaky") == []
    assert not sup.ready()
    async with api_server(sup) as base, httpx.AsyncClient() as client:
        model = (await client.get(f"{base}/v1/models/flaky")).json()
        states = [rep["state"] for rep in model["groups"][0]["replicas"]]
        assert states == ["failed", "failed"]
        assert "failed health checks" in model["groups"][0]["replicas"][0]["last_error"]
        metrics = (await client.get(f"{base}/metrics")).text
        assert 'llmd_modelservice_replica_given_up_total{model="flaky"} 2.0' in metrics
        assert 'llmd_modelservice_replicas{model="flaky",role="both",state="failed"} 2.0' in metrics
        assert (await client.get(f"{base}/readyz")).status_code == 503

        # A restart request revives a given-up replica (it fails again here, by design).
        resp = await client.post(f"{base}/v1/models/flaky/replicas/flaky-0/restart")
        assert resp.status_code == 202
    await wait(lambda: runners[0].restarts > 2)


async def test_scale_3_to_5_to_2_drains_before_stopping(
    no_orphans: None,
    fake_spec: Callable[..., Any],
    run_supervisor: Any,
    api_server: Any,
    wait: Any,
) -> None:
    sup = await run_supervisor(fake_spec("elastic", replicas=3))
    await wait(lambda: len(sup.registry.endpoints()) == 3)
    async with api_server(sup) as base, httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{base}/v1/models/elastic/scale", json={"replicas": 5})
        assert resp.status_code == 200, resp.text
        await wait(lambda: len(sup.registry.endpoints("elastic")) == 5)
        ids = sorted(e.id for e in sup.registry.endpoints())
        assert ids == [f"elastic-{i}" for i in range(5)]

        doomed = {e.id: e for e in sup.registry.endpoints() if e.id[-1] in "234"}
        async with WatchReader(base) as watch:
            await wait(lambda: watch.synced)
            # One slow request in flight on each replica that scaling down will remove.
            slow = [
                asyncio.create_task(
                    client.post(
                        f"http://{e.endpoint}/v1/completions",
                        json={"model": "elastic", "prompt": "x", "delay": 1.0},
                    )
                )
                for e in doomed.values()
            ]

            async def all_busy() -> bool:
                for e in doomed.values():
                    text = (await client.get(f"http://{e.endpoint}/metrics")).text
                    if 'vllm:num_requests_running{model_name="elastic",engine="0"} 1' not in text:
                        return False
                return True

            await wait(all_busy)
            resp = await client.post(f"{base}/v1/models/elastic/scale", json={"replicas": 2})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["groups"][0]["desired"] == 2
            assert [r["id"] for r in body["groups"][0]["replicas"]] == ["elastic-0", "elastic-1"]

            # The in-flight requests finished normally: the replicas drained before stopping.
            results = await asyncio.gather(*slow)
            assert [r.status_code for r in results] == [200, 200, 200]
            for rid, e in doomed.items():
                assert watch.of(rid) == ["ADDED:ready", "MODIFIED:draining", "DELETED:draining"]
                records = _records(fake_spec.state_dir, e.port)
                terms = [x for x in records if x["event"] == "sigterm"]
                assert terms == [terms[0]] and terms[0]["in_flight"] == 0, terms
            assert watch.of("elastic-0") == ["ADDED:ready"]
            assert watch.of("elastic-1") == ["ADDED:ready"]
    assert sorted(e.id for e in sup.registry.endpoints()) == ["elastic-0", "elastic-1"]


async def test_restart_api_drains_and_starts_a_new_process(
    no_orphans: None,
    fake_spec: Callable[..., Any],
    run_supervisor: Any,
    api_server: Any,
    wait: Any,
) -> None:
    sup = await run_supervisor(fake_spec("rolling", replicas=2))
    await wait(lambda: len(sup.registry.endpoints()) == 2)
    (r0, _r1) = sup.replicas("rolling")
    pid = r0.pid
    async with api_server(sup) as base, WatchReader(base) as watch, httpx.AsyncClient() as c:
        await wait(lambda: watch.synced)
        resp = await c.post(f"{base}/v1/models/rolling/replicas/rolling-0/restart")
        assert resp.status_code == 202
        await wait(lambda: r0.state == ReplicaState.READY and r0.pid not in (None, pid))
        await wait(lambda: len(watch.of("rolling-0")) == 4)
        assert watch.of("rolling-0") == [
            "ADDED:ready",
            "MODIFIED:draining",
            "DELETED:draining",
            "ADDED:ready",
        ]
        assert r0.restarts == 0, "a planned restart is not a failure"
        missing = await c.post(f"{base}/v1/models/rolling/replicas/rolling-9/restart")
        assert missing.status_code == 404
        assert "rolling-9" in missing.json()["error"]["message"]
        unknown = await c.post(f"{base}/v1/models/nope/scale", json={"replicas": 1})
        assert unknown.status_code == 404
        bad = await c.post(f"{base}/v1/models/rolling/scale", json={"replicas": -1})
        assert bad.status_code == 422
        error = bad.json()["error"]  # the README's one error shape, naming the field
        assert error["type"] == "invalid_request"
        assert error["message"].startswith("replicas: Input should be greater than or equal to 0")
        extra = await c.post(f"{base}/v1/models/rolling/scale", json={"replicas": 1, "x": 1})
        assert extra.status_code == 422
        assert extra.json()["error"]["message"].startswith("x: Extra inputs are not permitted")


async def test_engine_that_exits_at_startup_is_given_up(
    no_orphans: None, fake_spec: Callable[..., Any], run_supervisor: Any, wait: Any
) -> None:
    spec = fake_spec(
        "broken",
        replicas=1,
        engine={"extraArgs": ["--port", "not-a-port"]},
        restart={"maxFailures": 2},
    )
    sup = await run_supervisor(spec)
    (r,) = sup.replicas("broken")
    await wait(lambda: r.state == ReplicaState.FAILED)
    assert "before becoming healthy" in (r.last_error or "")
    assert "invalid int value" in (r.last_error or ""), "the engine's own error is reported"


async def test_endpoint_list_and_watch_resume_from_revision(
    no_orphans: None,
    fake_spec: Callable[..., Any],
    run_supervisor: Any,
    api_server: Any,
    wait: Any,
) -> None:
    sup = await run_supervisor(fake_spec("a", replicas=1), fake_spec("b", replicas=1))
    await wait(lambda: len(sup.registry.endpoints()) == 2)
    async with api_server(sup) as base, httpx.AsyncClient() as client:
        listing = (await client.get(f"{base}/v1/endpoints", params={"model": "a"})).json()
        assert [e["id"] for e in listing["endpoints"]] == ["a-0"]
        rev = listing["revision"]
        await sup.scale("b", 2)
        await wait(lambda: len(sup.registry.endpoints("b")) == 2)
        # Resuming from `rev` replays only what changed since, filtered by model.
        async with WatchReader(base, since=rev, model="b") as watch:
            await wait(lambda: watch.synced)
            changed = [e for e in watch.events if e["type"] != "BOOKMARK"]
            assert [(e["type"], e["endpoint"]["id"]) for e in changed] == [("ADDED", "b-1")]
