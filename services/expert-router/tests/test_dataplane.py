"""Single-process checks of the data plane (no process group: the all-to-all is a local copy)."""

import pytest

torch = pytest.importorskip("torch", reason="the data plane needs torch (`make torch`)")

from llmd_expert_router.dataplane import (  # noqa: E402
    DevicePlacement,
    EPMoE,
    ExpertPool,
    combine,
    dispatch,
    reference_moe,
)
from llmd_expert_router.dataplane.dispatch import _chunk_bounds  # noqa: E402
from llmd_expert_router.placement import LayerPlacement  # noqa: E402


def weights(e: int, h: int, i: int, seed: int = 0) -> tuple["torch.Tensor", "torch.Tensor"]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, h, 2 * i, generator=g) * h**-0.5, torch.randn(e, i, h, generator=g)


def test_grouped_matmul_modes_agree_and_skip_empty_slots() -> None:
    wgu, wd = weights(4, 8, 6)
    x = torch.randn(9, 8)
    counts = [3, 0, 6, 0]
    loop = ExpertPool(wgu, wd, mode="loop")(x, counts)
    bmm = ExpertPool(wgu, wd, mode="bmm")(x, counts)
    assert torch.allclose(loop, bmm, rtol=1e-5, atol=1e-6)
    assert ExpertPool(wgu, wd)(x[:0], [0, 0, 0, 0]).shape == (0, 8)


def test_pool_from_logical_holds_the_rank_slots_experts() -> None:
    wgu, wd = weights(4, 8, 6)
    layer = LayerPlacement((0, 1, 2, 0, 3, 1), 4, 2)
    pool = ExpertPool.from_logical(wgu, wd, layer, rank=1)
    assert torch.equal(pool.w_gate_up, wgu[[0, 3, 1]])
    assert torch.equal(pool.w_down, wd[[0, 3, 1]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "grouped"}, "mode:"),
    ],
)
def test_pool_rejects_bad_arguments(kwargs: dict[str, str], message: str) -> None:
    wgu, wd = weights(2, 4, 3)
    with pytest.raises(ValueError, match=message):
        ExpertPool(wgu, wd, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^w_down:"):
        ExpertPool(wgu, wd[:, :2])
    with pytest.raises(ValueError, match=r"^tokens_per_slot:"):
        ExpertPool(wgu, wd)(torch.randn(3, 4), [1, 1])


def test_replicas_share_an_expert_evenly() -> None:
    layer = LayerPlacement((0, 1, 2, 3, 0, 0), 4, 1)  # expert 0 in slots 0, 4, 5
    placement = DevicePlacement.build(layer)
    ids = torch.zeros(100, 1, dtype=torch.int64)
    routed = dispatch(torch.randn(100, 4), ids, torch.ones(100, 1), placement)
    assert routed.tokens_per_slot == [34, 0, 0, 0, 33, 33]


def test_identity_experts_return_the_gate_weighted_input() -> None:
    layer = LayerPlacement((0, 1, 2, 3, 1, 2), 4, 1)
    placement = DevicePlacement.build(layer)
    x = torch.randn(23, 8)
    ids = torch.stack([torch.randperm(4)[:3] for _ in range(23)])
    w = torch.rand(23, 3)
    for chunks in (1, 4, 40):
        routed = dispatch(x, ids, w, placement, num_chunks=chunks)
        out = combine(routed.expert_x, routed.handle)
        assert torch.allclose(out, x * w.sum(dim=1, keepdim=True), atol=1e-6)


def test_moe_layer_matches_the_reference_with_replicas_and_chunks() -> None:
    wgu, wd = weights(6, 8, 5, seed=3)
    layer = LayerPlacement((0, 1, 2, 3, 4, 5, 0, 0, 3), 6, 1)
    x = torch.randn(31, 8)
    ids = torch.stack([torch.randperm(4)[:2] for _ in range(31)])  # experts 4, 5 stay idle
    w = torch.rand(31, 2)
    ref = reference_moe(x, ids, w, wgu, wd)
    for mode in ("loop", "bmm"):
        moe = EPMoE(
            ExpertPool.from_logical(wgu, wd, layer, 0, mode=mode),  # type: ignore[arg-type]
            DevicePlacement.build(layer),
            num_chunks=3,
        )
        assert torch.allclose(moe(x, ids, w), ref, rtol=1e-5, atol=1e-5)
        assert moe.last_tokens_per_slot[4:6] == [0, 0]


def test_source_layout_hands_the_experts_an_index_instead_of_a_copy() -> None:
    wgu, wd = weights(5, 8, 4, seed=5)
    layer = LayerPlacement((0, 1, 2, 3, 4, 0, 2), 5, 1)
    placement = DevicePlacement.build(layer)
    x = torch.randn(40, 8)
    ids = torch.stack([torch.randperm(5)[:3] for _ in range(40)])
    w = torch.rand(40, 3)
    by_expert = dispatch(x, ids, w, placement, num_chunks=2)
    as_received = dispatch(x, ids, w, placement, num_chunks=2, layout="source")
    assert by_expert.slot_rows is None and as_received.slot_rows is not None
    assert torch.equal(as_received.expert_x[as_received.slot_rows], by_expert.expert_x)
    assert as_received.tokens_per_slot == by_expert.tokens_per_slot
    ref = reference_moe(x, ids, w, wgu, wd)
    for mode in ("loop", "bmm"):
        moe = EPMoE(
            ExpertPool.from_logical(wgu, wd, layer, 0, mode=mode),  # type: ignore[arg-type]
            placement,
            num_chunks=2,
            layout="source",
        )
        assert torch.allclose(moe(x, ids, w), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"^layout:"):
        dispatch(x, ids, w, placement, layout="rank")  # type: ignore[arg-type]


@pytest.mark.parametrize("tokens", [0, 1, 7, 64])
@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_chunk_bounds_match_the_device_formula(tokens: int, chunks: int) -> None:
    bounds = _chunk_bounds(tokens, chunks)
    assert bounds[0] == 0 and bounds[-1] == tokens and len(bounds) == chunks + 1
    for t in range(tokens):
        c = t * chunks // tokens
        assert bounds[c] <= t < bounds[c + 1]


def test_dispatch_rejects_bad_inputs_naming_the_field() -> None:
    placement = DevicePlacement.build(LayerPlacement.linear(4, 1))
    x, ids, w = torch.randn(5, 8), torch.zeros(5, 2, dtype=torch.int64), torch.ones(5, 2)
    cases = [
        ((x[0], ids, w), {}, "^hidden:"),
        ((x, ids[:3], w), {}, "^topk_ids: expected"),
        ((x, ids.float(), w), {}, "^topk_ids: expected an integer"),
        ((x, ids, w[:, :1]), {}, "^topk_weights:"),
        ((x.double(), ids, w), {}, "^hidden: dtype"),
        ((x, ids, w), {"num_chunks": 0}, "^num_chunks:"),
        ((x, ids + 4, w), {}, r"^topk_ids: expert ids outside \[0, 4\) on rank\(s\) \[0\]"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            dispatch(*args, placement, **kwargs)  # type: ignore[arg-type]
    two_ranks = DevicePlacement.build(LayerPlacement.linear(4, 2))
    with pytest.raises(ValueError, match=r"^placement: built for 2 ranks"):
        dispatch(x, ids, w, two_ranks)
    routed = dispatch(x, ids, w, placement)
    with pytest.raises(ValueError, match=r"^expert_y:"):
        combine(routed.expert_x[:1], routed.handle)


def test_bf16_rows_stay_bf16() -> None:
    placement = DevicePlacement.build(LayerPlacement.linear(4, 1))
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    ids = torch.tensor([[0, 1]] * 6)
    routed = dispatch(x, ids, torch.full((6, 2), 0.5), placement)
    out = combine(routed.expert_x, routed.handle)
    assert routed.expert_x.dtype == out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), x.float(), atol=1e-2)
