import numpy as np
import pytest
from llmd_expert_router.load_window import LoadWindow
from llmd_expert_router.placement import PlacementError, Topology

T = Topology(num_layers=2, num_logical_experts=3, num_ranks=1, slots_per_rank=3)


def test_window_sums_reports_and_forgets_old_ones() -> None:
    w = LoadWindow(T, window_s=10.0)
    w.add("a", [[1, 2, 3], [0, 0, 1]], now=0.0)
    w.add("b", [[1, 1, 1], [2, 2, 2]], now=5.0)
    assert w.total(now=5.0).tolist() == [[2, 3, 4], [2, 2, 3]]
    assert w.sources(now=5.0) == ["a", "b"]
    assert w.total(now=10.5).tolist() == [[1, 1, 1], [2, 2, 2]]
    assert w.sources(now=10.5) == ["b"]
    assert w.total(now=16.0).sum() == 0 and len(w) == 0


def test_window_rejects_bad_reports_and_keeps_its_sum() -> None:
    w = LoadWindow(T, window_s=10.0)
    w.add("a", [[1, 2, 3], [0, 0, 1]], now=0.0)
    with pytest.raises(PlacementError, match=r"^load: shape"):
        w.add("a", [[1, 2]], now=1.0)
    with pytest.raises(PlacementError, match=r"^load: counts"):
        w.add("a", [[1, 2, np.nan], [0, 0, 0]], now=1.0)
    assert w.total(now=1.0).sum() == 7 and len(w) == 1


def test_window_length_must_be_positive() -> None:
    with pytest.raises(PlacementError, match=r"^window_s:"):
        LoadWindow(T, window_s=0)


def test_a_clock_stepping_back_does_not_reorder_the_window() -> None:
    w = LoadWindow(T, window_s=10.0)
    w.add("a", np.ones((2, 3)), now=100.0)
    w.add("a", np.ones((2, 3)), now=50.0)  # stamped 100 like the previous one
    assert w.total(now=105.0).sum() == 12
    assert w.total(now=111.0).sum() == 0
