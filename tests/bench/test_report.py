"""The routing benchmark's report: vllm-router's own prefix statistics and the notes on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmd.bench import report
from llmd.bench.live import router_metrics_url, router_prefix_stats
from llmd.local.process import ProcessSpec

METRICS = """\
# HELP vllm_router_kv_placement_lookups_total lookups
# TYPE vllm_router_kv_placement_lookups_total counter
vllm_router_kv_placement_lookups_total{result="miss"} 8
vllm_router_kv_placement_lookups_total{result="hit"} 3
# HELP vllm_router_prefix_routing_decisions_total decisions
# TYPE vllm_router_prefix_routing_decisions_total counter
vllm_router_prefix_routing_decisions_total{policy="kv_aware",stage="regular",outcome="prefix_cost"} 11
# HELP vllm_router_requests_total requests
# TYPE vllm_router_requests_total counter
vllm_router_requests_total{route="/v1/chat/completions"} 11
# HELP llm_d_epp_kvindex_errors_total errors
# TYPE llm_d_epp_kvindex_errors_total counter
llm_d_epp_kvindex_errors_total 5
"""


def test_prefix_stats_group_by_result_and_outcome() -> None:
    stats = router_prefix_stats(METRICS)
    assert stats == {
        "kv_index_lookups": {"miss": 8.0, "hit": 3.0},
        "prefix_decisions": {"prefix_cost": 11.0},
        "kvmanager_score_errors": {"": 5.0},
    }


def test_metrics_url_only_for_a_router_with_a_prometheus_port() -> None:
    vr = ProcessSpec(name="vr", argv=["vllm-router", "--port", "1", "--prometheus-port", "9"])
    epp = ProcessSpec(name="epp", argv=["python", "-m", "llmd_epp", "--metrics-port", "7"])
    rr = ProcessSpec(name="rr", argv=["python", "-m", "llmd.bench.rrproxy", "--port", "1"])
    assert router_metrics_url([vr]) == "http://127.0.0.1:9/metrics"
    assert router_metrics_url([epp]) == "http://127.0.0.1:7/metrics"
    assert router_metrics_url([rr]) is None


def _cell(router: str, lookups: dict[str, float]) -> dict[str, object]:
    return {"router": router, "rate_rps": 8.0, "router_stats": {"kv_index_lookups": lookups}}


def test_notes_name_a_kv_index_that_never_matched() -> None:
    cells = [
        _cell("vllm-router-kv", {"miss": 400.0}),
        _cell("vllm-router-cache", {}),
        {"router": "round-robin", "rate_rps": 8.0},
    ]
    notes = report.kv_index_notes(cells)
    assert len(notes) == 1
    assert notes[0].startswith("vllm-router-kv @ 8 req/s") and "400 lookups" in notes[0]
    assert report.kv_index_notes([_cell("vllm-router-kv", {"miss": 5.0, "hit": 1.0})]) == []
    # Lookups without token ids did not match either.
    both = report.kv_index_notes([_cell("vllm-router-kv", {"miss": 392.0, "missing_tokens": 14.0})])
    assert len(both) == 1 and "406 lookups" in both[0]


def test_notes_count_failed_kvmanager_score_calls() -> None:
    cell = {
        "router": "epp-precise",
        "rate_rps": 16.0,
        "requests": 384,
        "router_stats": {"kvmanager_score_errors": {"": 120.0}},
    }
    notes = report.kv_index_notes([cell, {**cell, "router_stats": {}}])
    assert len(notes) == 1
    assert "120" in notes[0] and "epp-precise @ 16 req/s" in notes[0]


def _live(router: str, p90: float) -> dict[str, object]:
    return {
        "router": router, "rate_rps": 4.0, "requests": 10, "succeeded": 10, "drain_s": 0.1,
        "arrival_span_s": 10.0, "e2e_p50_s": 0.5, "ttft_p90_s": p90, "output_tokens_per_s": 100.0,
        "completes": True,
    }  # fmt: skip


def test_targets_say_why_there_is_no_vllm_router_comparison() -> None:
    t = report.targets([_live("round-robin", 0.9), _live("epp-precise", 0.3)])
    assert t["p90_ttft"]["ratio"] == pytest.approx(3.0)
    note = t["vs_vllm_router"]["note"]
    assert "no result at 4 req/s" in note and "skipped" in note
    t2 = report.targets(
        [_live("round-robin", 0.9), _live("epp-precise", 0.3), _live("vllm-router-cache", 0.6)]
    )
    assert t2["vs_vllm_router"]["ratio"] == pytest.approx(2.0) and t2["vs_vllm_router"]["met"]


def test_error_notes_give_counts_and_reasons() -> None:
    cell = {
        "router": "epp-precise",
        "rate_rps": 24.0,
        "errors": {"503": 2},
        "error_samples": {"503": ['{"error":\n "no ready endpoints in the pool"}']},
    }
    notes = report.error_notes([cell, {"router": "round-robin", "rate_rps": 24.0, "errors": {}}])
    assert notes == [
        'epp-precise @ 24 req/s failed 2 x 503: {"error": "no ready endpoints in the pool"}'
    ]


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "NONE"])
def test_epp_cells_run_the_dev_gateway_with_the_chosen_response_body_mode(
    tmp_path: Path, mode: str
) -> None:
    import yaml

    from llmd.bench.live import EngineOptions, LiveCluster
    from llmd.local.logs import LogSink

    cluster = LiveCluster(EngineOptions(epp_response_body=mode), LogSink(), tmp_path)
    specs, _ = cluster.router_specs("epp-precise", tmp_path)
    gw = next(s for s in specs if "llmd.gateway" in s.argv)
    doc = yaml.safe_load(Path(gw.argv[gw.argv.index("--config") + 1]).read_text())
    epp = doc["pools"][0]["epp"]
    assert (epp["request_body_mode"], epp["response_body_mode"]) == ("FULL_DUPLEX_STREAMED", mode)
    # The EPP config asks for a fallback endpoint, which the gateway tries on connect failure.
    epp_cfg = yaml.safe_load((tmp_path / "epp-precise.yaml").read_text())
    picker = next(p for p in epp_cfg["plugins"] if p["type"] == "max-score-picker")
    assert picker["parameters"]["maxNumOfEndpoints"] == 2


def _des(router: str, engines: int, rate: float, p90: float, tput: float, p50: float) -> dict:
    return {
        "engines": engines,
        "router": router,
        "rate_rps": rate,
        "requests": 600,
        "ttft_p50_s": p50,
        "ttft_p90_s": p90,
        "e2e_p50_s": 1.0,
        "output_tokens_per_s": tput,
        "arrival_span_s": 600 / rate,
        # The trace's thin tail drains any backlog before the last arrival: not a criterion.
        "drain_s": 1.0,
    }


def test_des_targets_anchor_on_round_robins_last_rate_without_a_backlog() -> None:
    rows = [
        # Round-robin: median TTFT 0.3 s at 10 req/s; at 20 req/s 2 s, over 2 x 0.3 + 0.1 s:
        # its median request queues, so it no longer keeps up.
        _des("round-robin", 64, 10, 0.5, 1000, 0.3),
        _des("round-robin", 64, 20, 4.0, 1200, 2.0),
        _des("epp-precise", 64, 10, 0.1, 1000, 0.05),
        _des("epp-precise", 64, 20, 0.3, 2000, 0.06),
        _des("epp-precise", 64, 30, 0.7, 2900, 0.08),
        _des("vllm-router-cache (model)", 64, 10, 0.15, 1000, 0.05),
    ]
    by_engines = report.des_cells(rows)
    assert list(by_engines) == [64]
    cells = {(c["router"], c["rate_rps"]): c["completes"] for c in by_engines[64]}
    assert cells[("round-robin", 10)] and not cells[("round-robin", 20)]
    t = report.targets(by_engines[64])
    assert t["rate_rps"] == 10
    assert t["p90_ttft"]["ratio"] == pytest.approx(5.0)
    q = t["throughput_at_equal_p90"]
    # epp-precise reaches round-robin's 0.5 s P90 halfway between 20 and 30 req/s: it sustains
    # 25 req/s where round-robin sustains 10, whatever the runs' output tokens/s.
    assert q["how"] == "interpolated"
    assert q["epp_precise_rate_rps"] == pytest.approx(25)
    assert q["epp_precise_tokens_per_s"] == pytest.approx(2450)
    assert q["ratio"] == pytest.approx(2.5) and q["met"]
    v = t["vs_vllm_router"]
    assert v["best_policy"] == "vllm-router-cache" and v["ratio"] == pytest.approx(1.5)
    text = "\n".join(report.target_lines(t))
    assert "sustains 25 req/s vs round-robin's 10: 2.50x" in text and "target 2x: met" in text
    assert t["round_robin_keeps_up"]["rates_rps"] == [10]
    assert "TTFT p50 within 2x its 300 ms at 10 req/s + 100 ms = 700 ms) at: 10 req/s" in text
    table = [
        {**r, "ttft_p99_s": 1.0, "e2e_p99_s": 2.0, "prefix_hit_rate": 0.5,
         "busiest_engine_share": 0.1}
        for r in rows
    ]  # fmt: skip
    md = report.markdown({"des": {"rows": table, "targets": {"64": t}}})
    assert "Targets in the discrete-event mode, 64 engines (vllm-router-cache is our model" in md
    assert "sustains 25 req/s" in md
    assert (
        "| 64 | round-robin | 20 | 2,000 | 4,000 | 1,000 | 2.00 | 1,200 | 0.50 | 0.100 | no |" in md
    )
    assert "| 64 | vllm-router-cache (model) | 10 |" in md


def test_throughput_at_equal_p90_is_a_lower_bound_when_ours_never_reaches_that_p90() -> None:
    rows = [
        _des("round-robin", 8, 10, 0.4, 500, 0.3),
        _des("round-robin", 8, 20, 1.0, 800, 0.5),
        _des("epp-precise", 8, 10, 0.2, 500, 0.05),
        _des("epp-precise", 8, 20, 0.3, 800, 0.05),
        _des("epp-precise", 8, 40, 0.4, 900, 0.06),
    ]
    t = report.targets(report.des_cells(rows)[8])
    assert t["rate_rps"] == 20
    q = t["throughput_at_equal_p90"]
    assert q["how"].startswith("lower bound")
    assert (q["epp_precise_rate_rps"], q["round_robin_rate_rps"]) == (40, 20)
    assert q["ratio"] == pytest.approx(2.0) and q["met"]
    assert q["epp_precise_tokens_per_s"] == 900


def test_a_p90_that_dips_at_a_higher_rate_counts_from_the_highest_rate_within_it() -> None:
    # Traces differ per rate, so a P90 can be lower at a higher rate; the sustained rate is the
    # highest one within the level, not an interpolation across the dip.
    rows = [
        _des("epp-precise", 8, 24, 1.4, 700, 1),
        _des("epp-precise", 8, 32, 0.8, 530, 1),
    ]
    rate, tput, how = report.sustained_at(rows, 1.3)
    assert (rate, tput) == (32, 530) and how.startswith("lower bound")
    rate, _, how = report.sustained_at([*rows, _des("epp-precise", 8, 48, 2.8, 800, 1)], 1.3)
    assert how == "interpolated" and rate == pytest.approx(32 + 16 * 0.5 / 2.0)
    assert report.sustained_at(rows, 0.5)[2].startswith("over that P90")


def test_a_probe_is_asked_for_only_when_the_throughput_reading_is_a_bound_short_of_2x() -> None:
    bound = {"how": "lower bound: within that P90 up to its highest tested rate", "met": False,
             "round_robin_rate_rps": 32.0}  # fmt: skip
    assert report.probe_rate({"throughput_at_equal_p90": bound}) == 64.0
    assert report.probe_rate({"throughput_at_equal_p90": {**bound, "met": True}}) is None
    assert report.probe_rate({"throughput_at_equal_p90": {**bound, "how": "interpolated"}}) is None
    assert report.probe_rate({"note": "round-robin completed at no tested rate"}) is None
    cells = [
        {**_live("round-robin", 0.9), "ttft_p50_s": 0.3},
        {**_live("epp-precise", 0.3), "ttft_p50_s": 0.1},
        {**_live("epp-precise", 0.5), "ttft_p50_s": 0.1, "rate_rps": 8.0, "probe": True},
    ]
    for c in cells:
        c.update(ttft_p99_s=1.0, itl_p50_s=0.01, e2e_p99_s=1.0, prefix_hit_rate=0.5,
                 overhead_added_p50_ms=1.0)  # fmt: skip
    md = report.markdown({"live": {"cells": cells, "targets": report.targets(cells)}})
    assert "| epp-precise (probe) | 8 |" in md and report.PROBE_NOTE in md
