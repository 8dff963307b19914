"""Summaries of a run: latency percentiles, throughput, cache hits, in model time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmd.bench.client import Result


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def summarize(
    results: Sequence[Result], *, time_scale: float, offered_rps: float
) -> dict[str, Any]:
    """Per-run numbers, latencies converted back to model seconds (divided by the time scale)."""
    scale = time_scale if time_scale > 0 else 1.0
    ok = [r for r in results if r.ok]
    ttft = [r.ttft / scale for r in ok if r.ttft is not None]
    e2e = [r.e2e / scale for r in ok if r.e2e is not None]
    itl = [x / scale for r in ok for x in r.itls()]
    if ok:
        start = min(r.sent_s for r in ok)
        end = max(r.end_s or 0.0 for r in ok)
        span = (end - start) / scale
        last_arrival = max(r.scheduled_s for r in results)
        arrival_span = (last_arrival - min(r.scheduled_s for r in results)) / scale
        drain = (end - last_arrival) / scale
    else:
        span = arrival_span = drain = math.nan
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    cached_tokens = sum(r.cached_tokens for r in ok)
    achieved = len(ok) / span if span and span > 0 else math.nan
    errors: dict[str, int] = {}
    # A few distinct error bodies per status: a 503's reason (no ready endpoint, flow-control
    # timeout, ...) is what tells a router's failure apart from an engine's.
    error_samples: dict[str, list[str]] = {}
    for r in results:
        if not r.ok:
            key = str(r.status) if r.status else (r.error.split(":", 1)[0] or "error")
            errors[key] = errors.get(key, 0) + 1
            seen = error_samples.setdefault(key, [])
            if r.error and r.error not in seen and len(seen) < 3:
                seen.append(r.error)
    return {
        "requests": len(results),
        "succeeded": len(ok),
        "errors": errors,
        "error_samples": error_samples,
        "offered_rps": offered_rps,
        "achieved_rps": achieved,
        "span_s": span,
        "arrival_span_s": arrival_span,
        # From the last arrival to the last completion. Reported, not a keep-up test: this
        # trace's arrivals thin out at its end, so a backlog has drained by then (`completes`).
        "drain_s": drain,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "ttft_p99_s": percentile(ttft, 99),
        "itl_p50_s": percentile(itl, 50),
        "itl_p90_s": percentile(itl, 90),
        "e2e_p50_s": percentile(e2e, 50),
        "e2e_p90_s": percentile(e2e, 90),
        "e2e_p99_s": percentile(e2e, 99),
        "output_tokens_per_s": out_tokens / span if span and span > 0 else math.nan,
        "prompt_tokens": prompt_tokens,
        "cached_tokens_reported": cached_tokens,
        "usage_hit_rate": cached_tokens / prompt_tokens if prompt_tokens else math.nan,
    }


# A router keeps up while its median TTFT stays within this factor of the unloaded one, plus
# this slack (model seconds), so that noise on a small TTFT is not read as a backlog.
KEEP_UP_FACTOR = 2.0
KEEP_UP_SLACK_S = 0.1


def completes(summary: dict[str, Any], *, unloaded_ttft_s: float) -> bool:
    """A router keeps up at a rate when every request succeeded and requests are not queueing:
    the median TTFT is within `KEEP_UP_FACTOR` times the unloaded median TTFT plus
    `KEEP_UP_SLACK_S`.

    Not the drain after the last arrival: the trace's arrivals thin out at its end (the last
    turns of conversations, seconds of think time apart), so every backlog has drained by then,
    and a router whose median request waited seconds in queue looked like one that kept up.
    """
    if summary["requests"] == 0 or summary["succeeded"] != summary["requests"]:
        return False
    ttft = summary["ttft_p50_s"]
    if math.isnan(ttft):
        return False
    return bool(ttft <= KEEP_UP_FACTOR * unloaded_ttft_s + KEEP_UP_SLACK_S)
