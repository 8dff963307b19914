"""The supervisor on real child processes: stages, readiness, failures, restarts, stop order."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmd.local import HttpProbe, LogSink, ProcessSpec, StartError, State, Supervisor, free_ports

CHILD = str(Path(__file__).with_name("child.py"))
pytestmark = pytest.mark.integration


def spec(name: str, port: int, *extra: str, **kw: object) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=[sys.executable, CHILD, name, str(port), *extra],
        address=f"127.0.0.1:{port}",
        probe=HttpProbe(f"http://127.0.0.1:{port}/ready"),
        **kw,  # type: ignore[arg-type]
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def wait_until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_stages_start_in_order_and_stop_by_rank(tmp_path: Path) -> None:
    stop_log = tmp_path / "stopped.txt"
    a, b, c = free_ports(3)
    out = io.StringIO()
    sink = LogSink(out, fmt="json", level="info")
    sup = Supervisor(
        [
            spec("engines", a, "--stop-log", str(stop_log), stage=0, stop_rank=2),
            spec("picker", b, "--stop-log", str(stop_log), "--ready-after", "0.5", stage=1,
                 stop_rank=1),
            spec("gateway", c, "--stop-log", str(stop_log), stage=2, stop_rank=0),
        ],
        sink,
    )  # fmt: skip
    await sup.start(timeout=20)
    assert [s for _, _, s in sup.states()] == ["ready"] * 3
    async with httpx.AsyncClient() as client:
        for port, name in ((a, "engines"), (b, "picker"), (c, "gateway")):
            assert (await client.get(f"http://127.0.0.1:{port}/ready")).text == name
    await sup.stop()
    assert stop_log.read_text().split() == ["gateway", "picker", "engines"]
    assert all(ch.state == State.STOPPED for ch in sup.children.values())
    # Child lines come through as JSON records tagged with their component.
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    serving = [r for r in records if r.get("event") == "serving"]
    assert {r["component"] for r in serving} == {"engines", "picker", "gateway"}
    assert any(r["event"] == "plain text line" and r["component"] == "picker" for r in records)


async def test_a_child_that_exits_before_ready_is_one_line_naming_it(tmp_path: Path) -> None:
    a, b = free_ports(2)
    sup = Supervisor(
        [
            spec("first", a, "--stop-log", str(tmp_path / "s"), stage=0),
            spec("broken", b, "--fail-before-ready", "config: models[0].replicas: bad", stage=1),
        ]
    )
    with pytest.raises(StartError) as err:
        await sup.start(timeout=20)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("broken exited with code 2 before it was ready")
    assert "models[0].replicas: bad" in msg
    # What had started was stopped.
    assert (tmp_path / "s").read_text().split() == ["first"]
    assert sup["first"].state == State.STOPPED


async def test_not_ready_in_time_names_the_probe() -> None:
    (a,) = free_ports(1)
    sup = Supervisor([spec("slow", a, "--ready-after", "60")])
    with pytest.raises(StartError, match=r"slow was not ready in time \(GET .*/ready: HTTP 503\)"):
        await sup.start(timeout=1.5)
    assert not sup["slow"].running


async def test_a_crash_after_ready_is_restarted() -> None:
    (a,) = free_ports(1)
    sup = Supervisor([spec("flaky", a, "--crash-after", "0.5", max_restarts=1)])
    await sup.start(timeout=20)
    first_pid = sup["flaky"].pid
    await wait_until(lambda: sup["flaky"].restarts == 1 and sup["flaky"].state == State.READY)
    assert sup["flaky"].pid != first_pid
    # It crashes again: restarts are exhausted, the supervisor reports the failure.
    await asyncio.wait_for(sup.failed.wait(), 15)
    assert "flaky exited with code 3" in sup.failure
    assert sup["flaky"].state == State.FAILED
    await sup.stop()


async def test_stop_kills_the_whole_process_group_even_when_term_is_ignored(
    tmp_path: Path,
) -> None:
    (a,) = free_ports(1)
    pidfile = tmp_path / "gc.pid"
    sup = Supervisor(
        [spec("stubborn", a, "--grandchild", str(pidfile), "--ignore-term", stop_timeout_s=0.5)]
    )
    await sup.start(timeout=20)
    await wait_until(pidfile.exists)
    grandchild = int(pidfile.read_text())
    child = sup["stubborn"].pid
    assert child is not None and alive(grandchild)
    started = time.monotonic()
    await sup.stop()
    assert time.monotonic() - started < 5
    await wait_until(lambda: not alive(grandchild) and not alive(child))
