"""A failed kvmanager score call shows on the EPP's llm_d_epp_kvindex_errors_total."""

from __future__ import annotations

from pathlib import Path

from llmd_epp.config import parse_settings
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from llmd_epp.server import EPP

from .helpers import ep, req

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "upstream-precise.yaml"


class DownIndex:
    async def score(self, request: object, endpoints: list[str]) -> object:
        raise ConnectionError("kvmanager down")


async def test_failed_score_calls_count_in_the_metric() -> None:
    epp = EPP(
        parse_settings(
            [
                "--config-file",
                str(CONFIG),
                "--kvmanager-address",
                "127.0.0.1:1",
                "--endpoints",
                "10.0.0.1:8000,10.0.0.2:8000",
            ],
            env={},
        )
    )
    scorers = [p for p in epp.picker.plugins.values() if isinstance(p, PrecisePrefixCacheScorer)]
    assert len(scorers) == 1
    scorer = scorers[0]
    scorer.source = DownIndex()  # type: ignore[assignment]
    metric = "llm_d_epp_kvindex_errors_total"
    assert epp.metrics.registry.get_sample_value(metric) == 0.0
    await scorer.prepare(req("p"), [ep(1), ep(2)])
    await scorer.prepare(req("q", rid="2"), [ep(1), ep(2)])
    assert scorer.errors == 2
    assert epp.metrics.registry.get_sample_value(metric) == 2.0
