"""`dp-rank-balancer` through real ext_proc: the rank travels in the header mutation to the
engine, a client cannot choose it, and requests in flight spread over the group's ranks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Driver, Engine, epp_settings, start_engines, stop_procs, wait_scraped

pytestmark = pytest.mark.integration

WIDE_EP = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: dp-rank-balancer
  parameters: {dataParallelSize: 4, expectedDecodeTokens: 16}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: dp-rank-balancer, weight: 1}
  - {pluginRef: max-score-picker}
"""


@pytest.fixture
def group() -> Iterator[Engine]:
    """One API server standing for a DP=4 group (vLLM serves every rank behind one port)."""
    (engine,) = start_engines(1)
    try:
        yield engine
    finally:
        stop_procs([engine.proc])


def body(i: int) -> dict[str, Any]:
    return {"model": "m", "prompt": f"request {i}: " + f"word{i} " * 50, "max_tokens": 3}


async def test_rank_header_reaches_the_engine_and_in_flight_requests_spread(
    group: Engine, run_epp: Any
) -> None:
    epp = await run_epp(epp_settings("--config-text", WIDE_EP, endpoints=[group]))
    await wait_scraped(epp, 1)
    driver = Driver(f"127.0.0.1:{epp.grpc.port}")
    try:
        # A client-sent rank is replaced by the EPP's choice.
        done = await driver.send(body(0), {"x-data-parallel-rank": "7"})
        assert done.status == 200
        assert done.headers["x-data-parallel-rank"] == "0"
        stats = (await driver.http.get(f"{group.url}/admin/stats")).json()
        assert stats["dp_ranks"] == ["0"]
        # Four requests held in flight (exchanges open, no response yet): one per rank.
        hdrs = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
        async with contextlib.AsyncExitStack() as stack:
            ranks = []
            for i in range(1, 5):
                ex = await stack.enter_async_context(driver.client.exchange())
                out = await ex.process_request(hdrs, [json.dumps(body(i)).encode()])
                assert out.local_reply is None
                assert out.headers["x-gateway-destination-endpoint"] == group.key
                ranks.append(out.headers["x-data-parallel-rank"])
            assert sorted(ranks) == ["0", "1", "2", "3"]
    finally:
        await driver.close()
