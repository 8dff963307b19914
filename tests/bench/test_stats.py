"""The routing benchmark's per-run summary: failures keep their reasons."""

from __future__ import annotations

from llmd.bench.client import Result
from llmd.bench.stats import completes, summarize


def _ok(i: int) -> Result:
    r = Result(f"ok{i}", scheduled_s=0.1 * i, sent_s=0.1 * i, first_token_s=0.1 * i + 0.05)
    r.end_s, r.status, r.output_tokens, r.chunk_times = 0.1 * i + 0.2, 200, 4, [0.1 * i + 0.05]
    return r


def _failed(i: int, status: int, error: str) -> Result:
    r = Result(f"bad{i}", scheduled_s=0.1 * i, sent_s=0.1 * i)
    r.end_s, r.status, r.error = 0.1 * i + 0.01, status, error
    return r


def test_failures_are_counted_by_status_with_a_few_distinct_reasons() -> None:
    results = [_ok(i) for i in range(5)] + [
        _failed(5, 503, '{"error": "no ready endpoints in the pool"}'),
        _failed(6, 503, '{"error": "no ready endpoints in the pool"}'),
        _failed(7, 503, '{"error": "request timed out in the flow control queue"}'),
        _failed(8, 0, "ReadTimeout: timed out"),
    ]
    s = summarize(results, time_scale=1.0, offered_rps=10.0)
    assert s["succeeded"] == 5 and s["requests"] == 9
    assert s["errors"] == {"503": 3, "ReadTimeout": 1}
    assert s["error_samples"]["503"] == [
        '{"error": "no ready endpoints in the pool"}',
        '{"error": "request timed out in the flow control queue"}',
    ]
    assert s["error_samples"]["ReadTimeout"] == ["ReadTimeout: timed out"]


def test_a_router_whose_median_request_queues_does_not_keep_up_however_fast_it_drains() -> None:
    # Round-robin at 384 req/s in the 64-engine discrete-event run: median TTFT 3.3 s against
    # 0.26 s at its lowest rate, yet its last request ended 0.97 s after the last arrival.
    cell = {"requests": 6144, "succeeded": 6144, "ttft_p50_s": 3.3, "drain_s": 0.97,
            "arrival_span_s": 53.9}  # fmt: skip
    assert not completes(cell, unloaded_ttft_s=0.26)
    assert completes({**cell, "ttft_p50_s": 0.30}, unloaded_ttft_s=0.26)
    # The slack: a 35 ms median that doubles is noise, not a queue.
    assert completes({**cell, "ttft_p50_s": 0.08}, unloaded_ttft_s=0.035)
    assert not completes({**cell, "succeeded": 6143, "ttft_p50_s": 0.3}, unloaded_ttft_s=0.26)
    assert not completes({**cell, "ttft_p50_s": float("nan")}, unloaded_ttft_s=0.26)
