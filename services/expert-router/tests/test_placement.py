import numpy as np
import pytest
from llmd_expert_router.placement import (
    LayerPlacement,
    Placement,
    PlacementError,
    Topology,
    imbalance_of,
)


def topo(**kw: object) -> Topology:
    base: dict[str, object] = dict(
        num_layers=1, num_logical_experts=4, num_ranks=2, slots_per_rank=3
    )
    base.update(kw)
    return Topology(**base)  # type: ignore[arg-type]


def test_topology_counts_slots_and_replicas() -> None:
    t = Topology.with_redundant(
        num_layers=58,
        num_logical_experts=256,
        num_ranks=32,
        num_redundant=32,
        num_nodes=4,
        num_groups=8,
    )
    assert (t.slots_per_rank, t.num_physical, t.num_redundant, t.ranks_per_node) == (9, 288, 32, 8)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"num_ranks": 0}, "num_ranks"),
        ({"num_nodes": 3}, "num_nodes"),
        ({"slots_per_rank": 1}, "slots_per_rank"),
        ({"num_groups": 3}, "num_groups"),
    ],
)
def test_topology_rejects_inconsistent_shapes_naming_the_field(
    kw: dict[str, int], field: str
) -> None:
    with pytest.raises(PlacementError, match=f"^{field}:"):
        topo(**kw)


def test_with_redundant_needs_an_even_split() -> None:
    with pytest.raises(PlacementError, match=r"^num_redundant:"):
        Topology.with_redundant(
            num_layers=1, num_logical_experts=256, num_ranks=32, num_redundant=5
        )


def test_placement_derives_replica_counts_and_tables() -> None:
    p = Placement(topo(), [[0, 1, 0, 2, 3, 0]])
    assert p.logcnt.tolist() == [[3, 1, 1, 1]]
    assert p.log2phy()[0].tolist() == [[0, 2, 5], [1, -1, -1], [3, -1, -1], [4, -1, -1]]
    layer = p.layer(0)
    assert layer.replicas == ((0, 2, 5), (1,), (3,), (4,))
    assert layer.local_experts(1) == (2, 3, 0)


def test_placement_rejects_missing_experts_and_bad_ids() -> None:
    with pytest.raises(PlacementError, match="expert 3 has no slot"):
        Placement(topo(), [[0, 1, 2, 0, 1, 2]])
    with pytest.raises(PlacementError, match=r"^phy2log:"):
        Placement(topo(), [[0, 1, 2, 3, 4, 0]])
    with pytest.raises(PlacementError, match=r"^phy2log: shape"):
        Placement(topo(), [[0, 1, 2, 3]])


def test_rank_loads_split_an_expert_evenly_over_its_replicas() -> None:
    p = Placement(topo(), [[0, 1, 0, 2, 3, 0]])
    load = [[90.0, 10.0, 20.0, 30.0]]
    # expert 0 has 3 replicas of 30 each: rank 0 = 30 + 10 + 30, rank 1 = 20 + 30 + 30
    assert p.rank_loads(load).tolist() == [[70.0, 80.0]]
    assert p.imbalance(load) == pytest.approx(80 / 75)


def test_imbalance_weights_layers_by_their_load() -> None:
    # Layer costs add up: (max 3 + max 1) / (mean 2 + mean 1).
    assert imbalance_of([[1.0, 3.0], [1.0, 1.0]]) == pytest.approx(4 / 3)
    assert imbalance_of([[0.0, 0.0]]) == 1.0


def test_per_layer_imbalance_is_one_for_an_idle_layer() -> None:
    p = Placement.linear(topo(num_layers=2, slots_per_rank=2))
    per_layer = p.per_layer_imbalance([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert per_layer.tolist() == [2.0, 1.0]


def test_load_shape_and_sign_are_checked() -> None:
    p = Placement.linear(topo(slots_per_rank=2))
    with pytest.raises(PlacementError, match=r"^load: shape"):
        p.imbalance([[1.0, 2.0]])
    with pytest.raises(PlacementError, match=r"^load: counts"):
        p.imbalance([[1.0, -2.0, 0.0, 0.0]])


def test_round_robin_deals_experts_like_cards() -> None:
    t = topo(num_logical_experts=6, num_ranks=2, slots_per_rank=4)
    rr = Placement.round_robin(t)
    assert rr.layer(0).local_experts(0) == (0, 2, 4, 0)
    assert rr.layer(0).local_experts(1) == (1, 3, 5, 1)


def test_moved_slots_and_round_trip_through_dict() -> None:
    t = topo()
    a = Placement(t, [[0, 1, 0, 2, 3, 0]])
    b = Placement(t, [[0, 1, 3, 2, 3, 0]])
    assert b.moved_slots(a) == 1
    assert b.moved_slots(None) == 6
    assert Placement.from_dict(a.to_dict()) == a
    assert a != b


def test_layer_placement_linear_and_validation() -> None:
    lp = LayerPlacement.linear(8, 4)
    assert lp.slots_per_rank == 2 and lp.local_experts(3) == (6, 7)
    with pytest.raises(PlacementError, match=r"^phy2log: experts without a slot"):
        LayerPlacement((0, 0), 2, 1)
    with pytest.raises(PlacementError, match=r"^num_ranks"):
        LayerPlacement.linear(6, 4)


def test_placement_arrays_are_read_only() -> None:
    p = Placement.linear(topo(slots_per_rank=2))
    with pytest.raises(ValueError):
        p.phy2log[0, 0] = 3
    assert isinstance(p.phy2log, np.ndarray)
