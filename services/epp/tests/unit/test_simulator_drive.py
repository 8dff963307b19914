"""The scheduling core driven the way a discrete-event simulator drives it: virtual time, no
sockets, no clock reads, state moved only by the hooks."""

from __future__ import annotations

import heapq
import subprocess
import sys
import time

import pytest
from llmd_epp.pickerconfig import load_picker_config
from llmd_epp.scheduling import Endpoint, EndpointMetrics, LLMRequest

CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 4}
- type: active-request-scorer
  parameters: {requestTimeout: 30s}
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: active-request-scorer, weight: 1}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


def test_importing_the_core_pulls_in_no_network_stack() -> None:
    code = (
        "import sys, llmd_epp.pickerconfig, llmd_epp.scheduling\n"
        "bad = [m for m in ('grpc', 'httpx', 'kubernetes', 'uvicorn') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_virtual_time_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_picker_config(CONFIG, seed=3)
    sched = cfg.scheduler

    def no_clock() -> float:
        raise AssertionError("the scheduling core read the wall clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)

    eps = [Endpoint.at(f"10.0.0.{i}:8000", metrics=EndpointMetrics()) for i in range(4)]
    conversations = [f"conversation {c} system prompt. " * 8 for c in range(6)]
    events: list[tuple[float, int, str, LLMRequest, str]] = []
    placement: dict[int, set[str]] = {c: set() for c in range(6)}
    seq = 0
    # Six conversations, five turns each, a turn every 0.5 virtual seconds, 2 s service time.
    for turn in range(5):
        for c, prefix in enumerate(conversations):
            now = turn * 3.0 + c * 0.5
            req = LLMRequest(
                request_id=f"c{c}t{turn}", model="m", target_model="m",
                prompt=prefix + f"turn {turn}",
            )  # fmt: skip
            heapq.heappush(events, (now, seq, "arrive", req, str(c)))
            seq += 1
    served_at_once = 0
    in_flight: dict[str, int] = {e.key: 0 for e in eps}
    while events:
        now, _, kind, req, conv = heapq.heappop(events)
        if kind == "arrive":
            for e in eps:  # the simulator's engines report their queues
                e.metrics.waiting = in_flight[e.key]
            result = sched.schedule(req, eps, now)
            sched.pre_request(req, result, now)
            key = result.primary.key
            placement[int(conv)].add(key)
            in_flight[key] += 1
            served_at_once = max(served_at_once, in_flight[key])
            heapq.heappush(events, (now + 2.0, seq, "done:" + key, req, conv))
            seq += 1
        else:
            key = kind.split(":", 1)[1]
            in_flight[key] -= 1
            sched.response_complete(req, key, now, {"prompt_tokens": 40, "completion_tokens": 8})
    # Prefix affinity keeps each conversation on the endpoint that holds it.
    assert all(len(keys) == 1 for keys in placement.values()), placement
    # Load spreading puts the six conversations on all four endpoints.
    assert len(set().union(*placement.values())) == 4
    active = cfg.plugins["active-request-scorer"]
    assert all(active.in_flight(e.key) == 0 for e in eps)  # type: ignore[attr-defined]
    assert served_at_once <= 3
