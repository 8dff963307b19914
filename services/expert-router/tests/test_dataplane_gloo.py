"""The distributed MoE layer against the single-process reference over gloo, 1, 2 and 4 ranks."""

import pytest

pytest.importorskip("torch", reason="the data plane needs torch (`make torch`)")

from llmd_expert_router.dataplane import selfcheck

_results: dict[int, list[selfcheck.Result]] = {}


def results_for(world: int) -> list[selfcheck.Result]:
    # One spawn per world size runs every case; the tests below read their case's results.
    if world not in _results:
        _results[world] = selfcheck.run(world, backend="gloo", device="cpu", timeout_s=240)
    return _results[world]


@pytest.mark.integration
@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("case", selfcheck.CASES, ids=lambda c: c.name)
def test_distributed_layer_matches_reference(world: int, case: selfcheck.Case) -> None:
    mine = [r for r in results_for(world) if r.case == case.name]
    assert sorted(r.rank for r in mine) == list(range(world)), mine
    failures = [f"rank {r.rank}: {r.detail}" for r in mine if not r.ok]
    assert not failures, failures


@pytest.mark.integration
def test_cases_cover_the_required_scenarios() -> None:
    names = {c.name for c in selfcheck.CASES}
    by = {c.name: c for c in selfcheck.CASES}
    assert any(c.redundant_per_rank > 0 for c in selfcheck.CASES)  # replicas
    assert any(0 in c.tokens for c in selfcheck.CASES)  # a rank without tokens
    assert any(c.active_experts for c in selfcheck.CASES)  # experts with zero tokens
    assert any(len(set(c.tokens)) > 1 for c in selfcheck.CASES)  # uneven loads
    assert {c.dtype for c in selfcheck.CASES} == {"float32", "bfloat16"}
    assert by["replicas_pipelined_bmm_fp32"].chunks > 1 and "bad_expert_id" in names
