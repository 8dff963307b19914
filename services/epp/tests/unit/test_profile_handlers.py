"""Profile handlers: single, P/D (threshold, decider, data parallel) and data-parallel."""

from __future__ import annotations

import random

import pytest
from llmd_epp.scheduling import (
    DATA_PARALLEL_HEADER,
    PREFILLER_HEADER,
    Scheduler,
    SchedulerProfile,
    SchedulingError,
)
from llmd_epp.scheduling.plugins.by_label import DecodeFilter, PrefillFilter
from llmd_epp.scheduling.plugins.data_parallel_profile_handler import DataParallelProfileHandler
from llmd_epp.scheduling.plugins.max_score_picker import MaxScorePicker
from llmd_epp.scheduling.plugins.pd_decider import PrefixBasedPDDecider
from llmd_epp.scheduling.plugins.pd_profile_handler import PdProfileHandler
from llmd_epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from llmd_epp.scheduling.plugins.queue_scorer import QueueScorer
from llmd_epp.scheduling.plugins.single_profile_handler import SingleProfileHandler

from .helpers import ep, req

ROLE = "llm-d.ai/role"


def pd_scheduler(handler: PdProfileHandler) -> tuple[Scheduler, PrefixCacheScorer]:
    prefix = PrefixCacheScorer("prefix-cache-scorer", block_chars=10)
    rng = random.Random(0)
    profiles = {
        "decode": SchedulerProfile(
            "decode",
            [DecodeFilter()],
            [(prefix, 2.0), (QueueScorer(), 1.0)],
            MaxScorePicker(rng=rng),
        ),
        "prefill": SchedulerProfile(
            "prefill", [PrefillFilter()], [(QueueScorer(), 1.0)], MaxScorePicker(rng=rng)
        ),
    }
    return Scheduler(profiles, handler), prefix


POOL = [
    ep(1, labels={ROLE: "prefill"}),
    ep(2, labels={ROLE: "prefill"}, waiting=3),
    ep(3, labels={ROLE: "decode"}),
    ep(4, labels={ROLE: "decode"}, waiting=2),
]


def test_single_profile_handler_runs_one_profile() -> None:
    prof = SchedulerProfile("default", [], [(QueueScorer(), 1.0)], MaxScorePicker())
    sched = Scheduler({"default": prof}, SingleProfileHandler())
    result = sched.schedule(req(), [ep(1, waiting=4), ep(2)], 0.0)
    assert result.primary_profile == "default"
    assert result.destination_list() == ["10.0.0.2:8000"]
    prof_none = SchedulerProfile("default", [PrefillFilter()], [], MaxScorePicker())
    with pytest.raises(SchedulingError):
        Scheduler({"default": prof_none}, SingleProfileHandler()).schedule(req(), [ep(1)], 0.0)


def test_pd_threshold_zero_always_disaggregates() -> None:
    sched, _ = pd_scheduler(PdProfileHandler(threshold=0))
    result = sched.schedule(req("short"), POOL, 0.0)
    assert result.destination_list() == [POOL[2].key]  # decode endpoint is the destination
    assert result.headers[PREFILLER_HEADER] == POOL[0].key
    assert set(result.profile_results) == {"decode", "prefill"}


def test_pd_threshold_skips_prefill_for_short_or_cached_prompts() -> None:
    handler = PdProfileHandler(threshold=100)
    sched, _ = pd_scheduler(handler)
    short = sched.schedule(req("x" * 50, rid="s"), POOL, 0.0)
    assert PREFILLER_HEADER not in short.headers
    assert set(short.profile_results) == {"decode"}
    long_prompt = "y" * 400
    r1 = req(long_prompt, rid="l1")
    first = sched.schedule(r1, POOL, 0.0)
    assert first.headers[PREFILLER_HEADER] == POOL[0].key
    sched.pre_request(r1, first, 0.0)
    # Same prompt again: the decode endpoint holds it, so the uncached part is below 100.
    again = sched.schedule(req(long_prompt + "tail", rid="l2"), POOL, 0.0)
    assert again.destination_list() == first.destination_list()
    assert PREFILLER_HEADER not in again.headers
    assert handler.decisions == {"decode-only": 2, "prefill-decode": 1}


def test_pd_with_prefix_based_decider_and_primary_port() -> None:
    decider = PrefixBasedPDDecider("d", non_cached_tokens=50)
    sched, _ = pd_scheduler(PdProfileHandler(decider=decider, primary_port=8000))
    no = sched.schedule(req("z" * 100, rid="a"), POOL, 0.0)  # 25 tokens
    assert PREFILLER_HEADER not in no.headers
    yes = sched.schedule(req("z" * 400, rid="b"), POOL, 0.0)  # 100 tokens
    assert yes.headers[PREFILLER_HEADER] == POOL[0].key
    assert yes.headers[DATA_PARALLEL_HEADER] == POOL[2].key
    assert yes.destination_list() == ["10.0.0.3:8000"]


def test_pd_without_decode_workers_fails() -> None:
    sched, _ = pd_scheduler(PdProfileHandler())
    with pytest.raises(SchedulingError, match="decode"):
        sched.schedule(req("x"), [POOL[0]], 0.0)  # prefill-only pool: role label required


def test_data_parallel_handler_rewrites_to_primary_port() -> None:
    prof = SchedulerProfile("dp", [], [(QueueScorer(), 1.0)], MaxScorePicker())
    sched = Scheduler({"dp": prof}, DataParallelProfileHandler(primary_port=9000))
    result = sched.schedule(req(), [ep(1, waiting=5), ep(2)], 0.0)
    assert result.headers[DATA_PARALLEL_HEADER] == "10.0.0.2:8000"
    assert result.destination_list() == ["10.0.0.2:9000"]


def test_prefill_header_handler_and_always_disagg_decider() -> None:
    from llmd_epp.scheduling import ProfileResult, SchedulingResult
    from llmd_epp.scheduling.plugins.pd_decider import AlwaysDisaggPDDecider
    from llmd_epp.scheduling.plugins.prefill_header_handler import PrefillHeaderHandler

    handler = PrefillHeaderHandler(prefill_profile="p")
    both = SchedulingResult("d", {"d": ProfileResult([POOL[2]]), "p": ProfileResult([POOL[1]])})
    handler.pre_request(req(), both, 0.0)
    assert both.headers == {PREFILLER_HEADER: POOL[1].key}
    decode_only = SchedulingResult("d", {"d": ProfileResult([POOL[2]])})
    handler.pre_request(req(), decode_only, 0.0)
    assert PREFILLER_HEADER not in decode_only.headers
    sched, _ = pd_scheduler(
        PdProfileHandler(threshold=10_000, decider=AlwaysDisaggPDDecider("always"))
    )
    result = sched.schedule(req("tiny"), POOL, 0.0)  # the decider overrides the threshold
    assert result.headers[PREFILLER_HEADER] == POOL[0].key
