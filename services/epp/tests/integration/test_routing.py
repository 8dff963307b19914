"""EPP + 4 real engine processes, driven through the SDK's Envoy-semantics client."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmd_sdk.contracts import EXT_PROC_SERVICE
from llmd_sdk.extproc import BodyMode

from .conftest import Driver, Engine, epp_settings, wait_scraped

pytestmark = pytest.mark.integration

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
LOAD_ONLY = (
    HEAD
    + """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
"""
)


def prompt(i: int, shared: str = "") -> dict[str, Any]:
    return {
        "model": "m",
        "prompt": f"{shared}request {i}: tell me about number {i}",
        "max_tokens": 3,
    }


async def eventually(cond: Any, timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        if loop.time() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.005)
    return loop.time() - t0


@pytest.mark.parametrize("mode", [BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED])
async def test_requests_sharing_a_long_prefix_converge(
    engines: list[Engine], run_epp: Any, mode: BodyMode
) -> None:
    epp = await run_epp(epp_settings(endpoints=engines))  # default config: queue, kv, prefix
    await wait_scraped(epp, 4)
    driver = Driver(f"127.0.0.1:{epp.grpc.port}", mode)
    try:
        shared = "You are a careful assistant. " * 40  # ~1.1k chars: many prefix blocks
        first = await driver.send(prompt(0, shared))
        assert first.status == 200
        assert first.endpoint == first.metadata_endpoint  # header and envoy.lb agree
        chosen = Counter([first.endpoint])
        for i in range(1, 12):
            out = await driver.send(prompt(i, shared))
            assert out.status == 200
            chosen[out.endpoint] += 1
        assert chosen[first.endpoint] == 12, chosen
        # Engines confirm where the traffic went.
        served = {e.key: e.served() for e in engines}
        assert served[first.endpoint] == 12
        # Unrelated prompts are spread: they do not all follow the cached prefix.
        spread = Counter()
        for i in range(12):
            spread[(await driver.send(prompt(100 + i, f"topic {i} " * 3))).endpoint] += 1
        assert len(spread) >= 2, spread
    finally:
        await driver.close()


async def test_saturated_endpoint_stops_getting_traffic(
    engines: list[Engine], run_epp: Any
) -> None:
    epp = await run_epp(epp_settings("--config-text", LOAD_ONLY, endpoints=engines))
    await wait_scraped(epp, 4)
    hot = engines[0]
    hot.set_load(waiting=40, kv=0.97)
    await eventually(
        lambda: epp.store.get(hot.key).metrics.waiting == 40, 5, "the EPP saw the load"
    )
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        outs = [await driver.send(prompt(i)) for i in range(40)]
    finally:
        await driver.close()
    assert all(o.status == 200 for o in outs)
    counts = Counter(o.endpoint for o in outs)
    assert hot.key not in counts, counts
    assert len(counts) == 3


async def test_killed_endpoint_leaves_the_pool_within_a_second(
    engines: list[Engine], run_epp: Any
) -> None:
    epp = await run_epp(epp_settings("--config-text", LOAD_ONLY, endpoints=engines))
    await wait_scraped(epp, 4)
    victim = engines[2]
    victim.kill()
    took = await eventually(
        lambda: victim.key not in {e.key for e in epp.store.candidates()},
        1.0,
        "killed endpoint left the pool",
    )
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        outs = [await driver.send(prompt(i)) for i in range(30)]
    finally:
        await driver.close()
    assert all(o.status == 200 for o in outs), [o.status for o in outs]
    assert victim.key not in {o.endpoint for o in outs}
    assert took < 1.0


async def test_subset_hint_is_honoured(engines: list[Engine], run_epp: Any) -> None:
    epp = await run_epp(epp_settings("--config-text", LOAD_ONLY, endpoints=engines))
    await wait_scraped(epp, 4)
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        only = [engines[3].key]
        outs = [await driver.send(prompt(i), subset=only) for i in range(8)]
        assert {o.endpoint for o in outs} == {engines[3].key}
        two = [engines[0].key, engines[1].key]
        outs = [await driver.send(prompt(i), subset=two) for i in range(16)]
        assert {o.endpoint for o in outs} <= set(two)
        empty = await driver.send(prompt(0), subset=[])
        assert empty.status == 503 and empty.local is not None
        assert json.loads(empty.local.body)["error"]["code"] == 503
        foreign = await driver.send(prompt(0), subset=["10.99.0.1:8000"])
        assert foreign.status == 503
    finally:
        await driver.close()


async def test_no_ready_endpoint_is_503(run_epp: Any, tmp_path: Path) -> None:
    eps = tmp_path / "eps.yaml"
    eps.write_text("endpoints: []\n")
    epp = await run_epp(epp_settings("--endpoints-file", str(eps)))
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        out = await driver.send(prompt(0))
        assert out.status == 503
        assert "no ready endpoints" in json.loads(out.local.body)["error"]["message"]  # type: ignore[union-attr]
        # Endpoints that never answer their metrics become unhealthy: still 503, not a pick.
        eps.write_text("endpoints: [{address: 127.0.0.1, port: 1}]\n")
        await eventually(lambda: len(epp.store) == 1, 5, "file re-read")
        await eventually(lambda: not epp.store.candidates(), 5, "dead endpoint unhealthy")
        assert (await driver.send(prompt(1))).status == 503
        bad = await driver.send(b"{not json")
        assert bad.status == 400
    finally:
        await driver.close()
    assert epp.metrics.outcomes.labels("unavailable")._value.get() == 2


async def test_sheddable_requests_get_429_when_saturated(
    engines: list[Engine], run_epp: Any, tmp_path: Path
) -> None:
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text("batch: -1\ninteractive: 10\n")
    epp = await run_epp(
        epp_settings(
            "--config-text",
            LOAD_ONLY,
            "--objectives-file",
            str(objectives),
            "--flow-control",
            "off",
            endpoints=engines,
        )
    )
    await wait_scraped(epp, 4)
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        batch = {"x-gateway-inference-objective": "batch"}
        assert (await driver.send(prompt(0), batch)).status == 200  # not saturated yet
        for e in engines:
            e.set_load(waiting=20)
        await eventually(
            lambda: all(e.metrics.waiting == 20 for e in epp.store.all()), 5, "saturation seen"
        )
        shed = await driver.send(prompt(1), batch)
        assert shed.status == 429
        assert json.loads(shed.local.body)["error"]["type"] == "RateLimitError"  # type: ignore[union-attr]
        # Non-sheddable traffic is still scheduled (flow control off: upstream behaviour).
        ok = await driver.send(prompt(2), {"x-gateway-inference-objective": "interactive"})
        assert ok.status == 200
    finally:
        await driver.close()
    assert epp.metrics.outcomes.labels("shed")._value.get() == 1


async def test_flow_control_queues_until_capacity_returns_and_times_out(
    engines: list[Engine], run_epp: Any
) -> None:
    epp = await run_epp(
        epp_settings(
            "--config-text",
            LOAD_ONLY,
            "--flow-control",
            "on",
            "--queue-ttl",
            "20s",
            endpoints=engines,
        )
    )
    await wait_scraped(epp, 4)
    for e in engines:
        e.set_load(kv=0.99)
    await eventually(
        lambda: all(e.metrics.kv_usage == 0.99 for e in epp.store.all()), 5, "saturation seen"
    )
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        pending = asyncio.create_task(driver.send(prompt(0)))
        await eventually(lambda: epp.director.flow.queued == 1, 5, "request queued")
        assert not pending.done()
        engines[1].set_load(kv=0.1)
        out = await asyncio.wait_for(pending, 10)
        assert out.status == 200 and out.endpoint == engines[1].key
        # A short TTL: the request gives up with 503.
        engines[1].set_load(kv=0.99)
        await eventually(
            lambda: epp.store.get(engines[1].key).metrics.kv_usage == 0.99, 5, "saturated again"
        )
        epp.director.flow.default_ttl = 0.2
        late = await driver.send(prompt(1))
        assert late.status == 503
        assert "timed out" in json.loads(late.local.body)["error"]["message"]  # type: ignore[union-attr]
    finally:
        await driver.close()
    assert epp.metrics.outcomes.labels("timeout")._value.get() == 1


FALLBACK_SESSION = (
    HEAD
    + """
plugins:
- type: queue-scorer
- type: session-affinity-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 3}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: session-affinity-scorer, weight: 10}
  - {pluginRef: max-score-picker}
"""
)


async def test_fallback_list_session_affinity_and_streamed_usage(
    engines: list[Engine], run_epp: Any
) -> None:
    epp = await run_epp(epp_settings("--config-text", FALLBACK_SESSION, endpoints=engines))
    await wait_scraped(epp, 4)
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        body = {**prompt(0), "stream": True, "stream_options": {"include_usage": True}}
        first = await driver.send(body)
        assert first.status == 200
        dests = first.endpoint.split(",")  # type: ignore[union-attr]
        assert len(dests) == 3 and len(set(dests)) == 3
        assert first.metadata_endpoint == first.endpoint
        assert b"data: [DONE]" in first.body
        token = first.response_headers["x-session-token"]
        for i in range(5):
            again = await driver.send(prompt(i), {"x-session-token": token})
            assert again.endpoint.split(",")[0] == dests[0]  # type: ignore[union-attr]
    finally:
        await driver.close()
    m = epp.metrics
    assert m.input_tokens.labels("m", "m")._sum.get() > 0
    assert m.requests.labels("m", "m")._value.get() == 6
    await eventually(lambda: not epp.director.in_flight, 5, "in-flight released")


async def test_health_services_and_metrics(engines: list[Engine], run_epp: Any) -> None:
    epp = await run_epp(epp_settings(endpoints=engines))
    await wait_scraped(epp, 4)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.health_server.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def status(service: str) -> int:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            return int(resp.status)

        assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
        await eventually(lambda: epp.health.ready, 5, "ready")
        for svc in ("readiness", EXT_PROC_SERVICE):
            assert await status(svc) == health_pb2.HealthCheckResponse.SERVING
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        await driver.send(prompt(0, "hello " * 50))
    finally:
        await driver.close()
    epp.director.refresh_pool_gauges()
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{epp.metrics_server.port}/metrics")).text
    for name in (
        'inference_objective_request_total{model_name="m",target_model_name="m"} 1.0',
        "inference_extension_scheduler_e2e_duration_seconds_count 1.0",
        'inference_pool_ready_pods{name=""} 4.0',
        'llm_d_epp_request_outcomes_total{outcome="picked"} 1.0',
        'inference_extension_plugin_duration_seconds_count{extension_point="Scorer",'
        'plugin_name="prefix-cache-scorer",plugin_type="prefix-cache-scorer"} 1.0',
        "inference_extension_prefix_indexer_hit_ratio_count 1.0",
    ):
        assert name in text, name


async def test_a_decision_is_a_span_in_the_callers_trace(
    engines: list[Engine], run_epp: Any
) -> None:
    """A request that carries a W3C `traceparent` gets one `llm_d.epp.schedule` span, a child of
    the caller's span, naming the pick; a request without one (and no exporter configured) costs
    no span."""
    from llmd_sdk.telemetry import setup_tracing
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = setup_tracing("llmd-epp", exporter=exporter)
    epp = await run_epp(epp_settings("--config-text", LOAD_ONLY, endpoints=engines))
    await wait_scraped(epp, 4)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        traced = await driver.send(
            prompt(1), headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
        untraced = await driver.send(prompt(2))
    finally:
        await driver.close()
    assert traced.status == 200 and untraced.status == 200
    provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.name == "llm_d.epp.schedule"]
    exporter.shutdown()  # the provider is process-wide: later tests export nowhere
    assert len(spans) == 1, [s.attributes for s in spans]
    span = spans[0]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    assert span.attributes is not None
    assert span.attributes["llm_d.epp.outcome"] == "picked"
    assert span.attributes["llm_d.epp.endpoint"] == traced.endpoint
    assert span.attributes["llm_d.epp.candidates"] == 4
