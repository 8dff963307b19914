from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from llmd_expert_router.http_api import create_app
from llmd_expert_router.placement import Topology
from llmd_expert_router.service import ExpertRouterService
from llmd_expert_router.synthetic import zipf_load

T = Topology.with_redundant(
    num_layers=2, num_logical_experts=16, num_ranks=4, num_redundant=4, num_nodes=2, num_groups=4
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    service = ExpertRouterService(T, window_s=60.0, min_improvement=0.05, clock=clock)
    app = create_app(service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://er") as c:
        yield c


def counts(seed: int = 0) -> list[list[int]]:
    out: list[list[int]] = zipf_load(
        2, 16, num_tokens=500, top_k=4, exponent=1.3, seed=seed
    ).tolist()
    return out


async def test_health_ready_and_initial_plan(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "SERVING"}
    assert (await client.get("/readyz")).status_code == 200
    plan = (await client.get("/v1/plan")).json()
    assert plan["version"] == 1 and plan["reason"] == "initial"
    assert len(plan["phy2log"]) == 2 and len(plan["phy2log"][0]) == 20
    assert plan["topology"]["slots_per_rank"] == 5
    assert (await client.get("/v1/topology")).json()["num_groups"] == 4


async def test_push_rebalance_publish_and_history(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/loads", json={"source": "engine-0", "counts": counts()})
    assert r.status_code == 202 and r.json()["window_reports"] == 1
    window = (await client.get("/v1/loads", params={"full": "true"})).json()
    assert window["sources"] == ["engine-0"]
    assert window["tokens"] == 2 * 500 * 4
    assert np.asarray(window["counts"]).shape == (2, 16)

    d = (await client.post("/v1/rebalance")).json()
    assert d["published"] is True and d["version"] == 2
    assert d["candidate_imbalance"] < d["current_imbalance"]
    again = (await client.post("/v1/rebalance", json={})).json()
    assert again["published"] is False and again["version"] == 2

    history = (await client.get("/v1/plans")).json()["plans"]
    assert [p["version"] for p in history] == [2, 1]
    assert (await client.get("/v1/plans/2")).json()["imbalance"] == pytest.approx(
        d["candidate_imbalance"]
    )
    missing = await client.get("/v1/plans/7")
    assert missing.status_code == 404 and missing.json()["error"].startswith("version:")


async def test_window_expires_old_reports(client: httpx.AsyncClient, clock: Clock) -> None:
    await client.post("/v1/loads", json={"counts": counts()})
    clock.now += 61
    assert (await client.get("/v1/loads")).json()["reports"] == 0
    d = (await client.post("/v1/rebalance")).json()
    assert d["published"] is False and d["reason"] == "no load in window"


@pytest.mark.parametrize(
    ("body", "status", "prefix"),
    [
        ({"counts": [[1, 2]]}, 400, "load: shape (1, 2), expected (2, 16)"),
        ({"counts": "x"}, 422, "counts:"),
        ({"counts": [[-1] * 16] * 2}, 400, "load: counts must be finite and >= 0"),
        ({"source": "", "counts": [[0] * 16] * 2}, 422, "source:"),
        ({"counts": [[0] * 16] * 2, "extra": 1}, 422, "extra:"),
    ],
)
async def test_bad_reports_get_one_line_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], status: int, prefix: str
) -> None:
    r = await client.post("/v1/loads", json=body)
    assert r.status_code == status
    msg = r.json()["error"]
    assert msg.startswith(prefix) and "\n" not in msg


async def test_metrics_expose_imbalance_and_plan_version(client: httpx.AsyncClient) -> None:
    await client.post("/v1/loads", json={"source": "e1", "counts": counts()})
    await client.post("/v1/loads", json={"counts": [[1]]})
    await client.post("/v1/rebalance")
    text = (await client.get("/metrics")).text
    assert "llmd_expert_router_plan_version 2.0" in text
    assert 'llmd_expert_router_load_reports_total{source="e1"} 1.0' in text
    assert "llmd_expert_router_load_reports_rejected_total 1.0" in text
    assert 'llmd_expert_router_imbalance{placement="candidate"}' in text
    assert 'llmd_expert_router_rebalance_rounds_total{outcome="published"} 1.0' in text


async def test_readiness_drops_when_shutting_down(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    app.state.health.shutdown()
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "NOT_SERVING"
