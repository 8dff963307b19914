"""The routing benchmark's trace: reproducible, and the same trace at every rate, compressed."""

from __future__ import annotations

import pytest

from llmd.bench.workload import WorkloadSpec, build_trace

SPEC = WorkloadSpec(seed=3, groups=3, users_per_group=2, turns=3, system_words=50)


def _by_id(rate: float) -> dict[str, object]:
    return {t.request_id: t for t in build_trace(SPEC, rate)}


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    a, b = build_trace(SPEC, 4.0), build_trace(SPEC, 4.0)
    assert [(t.request_id, t.arrival_s, t.messages) for t in a] == [
        (t.request_id, t.arrival_s, t.messages) for t in b
    ]
    other = build_trace(WorkloadSpec(seed=4, groups=3, users_per_group=2, turns=3), 4.0)
    assert [t.arrival_s for t in other] != [t.arrival_s for t in a]


def test_a_higher_rate_starts_the_same_conversations_sooner_with_the_same_think_times() -> None:
    slow, fast = _by_id(2.0), _by_id(4.0)
    assert slow.keys() == fast.keys() and len(slow) == SPEC.requests
    for rid, s in slow.items():
        f = fast[rid]
        assert f.messages == s.messages  # content does not depend on the rate
        if s.turn == 0:
            # Conversation starts scale with 1/rate: the same draws, compressed.
            assert f.arrival_s == pytest.approx(s.arrival_s / 2)
        else:
            prev = f"c{s.conversation}-t{s.turn - 1}"
            think_slow = s.arrival_s - slow[prev].arrival_s
            think_fast = f.arrival_s - fast[prev].arrival_s
            assert think_fast == pytest.approx(think_slow) and think_slow > 0


def test_each_turn_extends_the_previous_turns_prompt() -> None:
    turns = _by_id(4.0)
    for t in turns.values():
        assert t.messages[0]["role"] == "system"
        if t.turn:
            prev = turns[f"c{t.conversation}-t{t.turn - 1}"]
            # The earlier prompt, its recorded answer, then the new question.
            assert t.messages[: len(prev.messages)] == prev.messages
            assert [m["role"] for m in t.messages[len(prev.messages) :]] == ["assistant", "user"]


def test_a_rate_that_is_not_positive_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="rate_rps"):
        build_trace(SPEC, 0)
