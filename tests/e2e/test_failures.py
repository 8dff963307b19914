"""Failures under load: a replica killed mid-run, and a saturated pool."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from e2e_helpers import RunningStack, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

QWEN, SAT = "Qwen/Qwen3-0.6B", "sat-model"
LONG = 600


def chat(model: str, max_tokens: int = 4, text: str = "Hello there") -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def test_a_killed_replica_loses_no_request_and_is_restarted(
    stack: RunningStack, client: httpx.Client
) -> None:
    victim, survivor = stack.replicas("qwen3")
    assert victim.state == survivor.state == "ready" and victim.pid
    statuses: list[int] = []
    killed = threading.Event()

    def one(i: int) -> int:
        if i == 6:
            os.kill(victim.pid or 0, signal.SIGKILL)  # mid-run, with requests in flight
            killed.set()
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            return c.post("/v1/chat/completions", json=chat(QWEN, text=f"request {i}")).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, range(40)))
    assert killed.is_set()
    assert statuses == [200] * 40

    # modelservice notices, restarts it, and it serves again.
    back = wait_for(
        lambda: next(
            (
                r
                for r in stack.replicas("qwen3")
                if r.id == victim.id and r.state == "ready" and r.pid != victim.pid
            ),
            None,
        ),
        60,
        "the killed replica to be restarted and ready",
    )
    assert back.restarts >= 1 and back.endpoint == victim.endpoint
    base = stack.metric_sum(back.endpoint, "vllm:request_success_total")

    def served_again() -> bool:
        resp = client.post("/v1/chat/completions", json=chat(QWEN, text="after restart"))
        assert resp.status_code == 200
        return stack.metric_sum(back.endpoint, "vllm:request_success_total") > base

    wait_for(served_again, 30, "the restarted replica to get traffic again", every=0.05)


def flow_queue(stack: RunningStack) -> float:
    cfg = stack.stack.config
    index = [m.name for m in cfg.models].index("sat")
    port = cfg.epp_ports(index)[2]
    text = httpx.get(f"http://{cfg.host}:{port}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "inference_extension_flow_control_queue_size"
    )


def test_saturated_pool_sheds_sheddable_and_queues_critical(stack: RunningStack) -> None:
    (engine,) = stack.replicas("sat")
    url = stack.url

    def post(objective: str, max_tokens: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120) as c:
            return c.post(
                "/v1/chat/completions",
                json=chat(SAT, max_tokens),
                headers={"x-gateway-inference-objective": objective},
            )

    def gauge(name: str) -> float:
        return stack.metric_sum(engine.endpoint, name)

    with ThreadPoolExecutor(4) as pool:
        # One request runs (max-num-seqs 1), a second waits: the pool is saturated. They are
        # long (~600 decode steps, ~7 s) so that the first still runs, and the pool stays
        # saturated, through the checks below even on a slow, busy machine.
        long1 = pool.submit(post, "critical", LONG)
        wait_for(lambda: gauge("vllm:num_requests_running") >= 1, 20, "the first to run")
        long2 = pool.submit(post, "critical", LONG)
        wait_for(lambda: gauge("vllm:num_requests_waiting") >= 1, 20, "the second to wait")

        shed = post("sheddable", 4)
        assert shed.status_code == 429, shed.text
        assert shed.json()["error"]["message"]

        queued = pool.submit(post, "critical", 4)
        wait_for(lambda: flow_queue(stack) >= 1, 20, "the critical request to be queued")
        assert not queued.done()
        done = queued.result(120)
        assert done.status_code == 200, done.text
        assert long1.result(120).status_code == 200
        assert long2.result(120).status_code == 200
    wait_for(lambda: flow_queue(stack) == 0, 10, "the flow-control queue to drain")
