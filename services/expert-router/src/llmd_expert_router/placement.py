"""Where each logical expert lives: physical expert slots over ranks and nodes.

A placement maps, for every MoE layer, each physical slot to the logical expert whose weights
it holds. Slots are numbered rank-major: rank ``r`` owns slots ``[r * S, (r + 1) * S)`` where
``S`` is the number of slots per rank, and ranks are numbered node-major (``R / N`` consecutive
ranks per node). A logical expert with ``c`` replicas is served by ``c`` slots; the dispatcher
splits that expert's tokens evenly over them, so each replica carries ``load / c``.

Imbalance factor
    For one layer, ``max_r load_r / mean_r load_r`` over ranks. Layers run one after another and
    the ranks of an EP group step together, so a forward pass costs ``sum_l max_r load[l, r]``; the
    imbalance of a placement over all layers is therefore ``sum_l max_r / sum_l mean_r`` (1.0 is
    perfect balance). ``per_layer_imbalance`` gives the per-layer factors.

Pure numpy; no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class PlacementError(ValueError):
    """An inconsistent placement or topology; the message names the offending field."""


@dataclass(frozen=True)
class Topology:
    """Shape of an expert-parallel group.

    Attributes:
        num_layers: MoE layers in the model.
        num_logical_experts: routed experts per layer (DeepSeek-V3: 256).
        num_ranks: GPUs (EP ranks) in the group.
        num_nodes: servers the ranks are spread over (fast links inside a node).
        slots_per_rank: physical expert slots on each rank; ``num_ranks * slots_per_rank -
            num_logical_experts`` slots hold redundant replicas.
        num_groups: expert groups of group-limited routing (DeepSeek-V3: 8); ``None`` when the
            model has none.
    """

    num_layers: int
    num_logical_experts: int
    num_ranks: int
    slots_per_rank: int
    num_nodes: int = 1
    num_groups: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_logical_experts", "num_ranks", "slots_per_rank"):
            if getattr(self, name) < 1:
                raise PlacementError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_nodes < 1 or self.num_ranks % self.num_nodes:
            raise PlacementError(
                f"num_nodes: must divide num_ranks={self.num_ranks}, got {self.num_nodes}"
            )
        if self.num_physical < self.num_logical_experts:
            raise PlacementError(
                f"slots_per_rank: {self.num_ranks} ranks x {self.slots_per_rank} slots cannot "
                f"hold {self.num_logical_experts} experts"
            )
        if self.num_groups is not None and (
            self.num_groups < 1 or self.num_logical_experts % self.num_groups
        ):
            raise PlacementError(
                f"num_groups: must divide num_logical_experts={self.num_logical_experts}, "
                f"got {self.num_groups}"
            )

    @property
    def num_physical(self) -> int:
        """Physical expert slots in the group."""
        return self.num_ranks * self.slots_per_rank

    @property
    def num_redundant(self) -> int:
        """Slots left for replicas once every logical expert has one."""
        return self.num_physical - self.num_logical_experts

    @property
    def ranks_per_node(self) -> int:
        return self.num_ranks // self.num_nodes

    @classmethod
    def with_redundant(
        cls,
        *,
        num_layers: int,
        num_logical_experts: int,
        num_ranks: int,
        num_redundant: int,
        num_nodes: int = 1,
        num_groups: int | None = None,
    ) -> Topology:
        """A topology with ``num_redundant`` replica slots (total must divide over the ranks)."""
        total = num_logical_experts + num_redundant
        if num_redundant < 0 or total % num_ranks:
            raise PlacementError(
                f"num_redundant: {num_logical_experts} experts + {num_redundant} replicas must "
                f"divide evenly over {num_ranks} ranks"
            )
        return cls(
            num_layers=num_layers,
            num_logical_experts=num_logical_experts,
            num_ranks=num_ranks,
            slots_per_rank=total // num_ranks,
            num_nodes=num_nodes,
            num_groups=num_groups,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "num_logical_experts": self.num_logical_experts,
            "num_ranks": self.num_ranks,
            "slots_per_rank": self.slots_per_rank,
            "num_nodes": self.num_nodes,
            "num_groups": self.num_groups,
        }


@dataclass(frozen=True)
class LayerPlacement:
    """One layer's placement, in plain Python, as the data plane consumes it.

    ``phy2log[p]`` is the logical expert held by physical slot ``p``; slot ``p`` lives on rank
    ``p // slots_per_rank`` at local index ``p % slots_per_rank``.
    """

    phy2log: tuple[int, ...]
    num_logical_experts: int
    num_ranks: int
    replicas: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_ranks < 1 or len(self.phy2log) % self.num_ranks:
            raise PlacementError(
                f"phy2log: {len(self.phy2log)} slots do not divide over {self.num_ranks} ranks"
            )
        slots: list[list[int]] = [[] for _ in range(self.num_logical_experts)]
        for p, e in enumerate(self.phy2log):
            if not 0 <= e < self.num_logical_experts:
                raise PlacementError(f"phy2log[{p}]: expert {e} out of range")
            slots[e].append(p)
        missing = [e for e, s in enumerate(slots) if not s]
        if missing:
            raise PlacementError(f"phy2log: experts without a slot: {missing[:8]}")
        object.__setattr__(self, "replicas", tuple(tuple(s) for s in slots))

    @property
    def num_physical(self) -> int:
        return len(self.phy2log)

    @property
    def slots_per_rank(self) -> int:
        return len(self.phy2log) // self.num_ranks

    def local_experts(self, rank: int) -> tuple[int, ...]:
        """Logical expert of each local slot of ``rank``."""
        s = self.slots_per_rank
        return self.phy2log[rank * s : (rank + 1) * s]

    @classmethod
    def linear(cls, num_logical_experts: int, num_ranks: int) -> LayerPlacement:
        """Contiguous blocks of experts per rank, no replicas (the default EP layout)."""
        if num_logical_experts % num_ranks:
            raise PlacementError(
                f"num_ranks: {num_ranks} does not divide {num_logical_experts} experts"
            )
        return cls(tuple(range(num_logical_experts)), num_logical_experts, num_ranks)


class Placement:
    """All layers' placements plus the derived replica tables.

    Attributes:
        topology: the group's shape.
        phy2log: ``[L, P]`` logical expert of each physical slot.
        logcnt: ``[L, E]`` replicas of each logical expert.
    """

    __slots__ = ("logcnt", "phy2log", "topology")

    def __init__(self, topology: Topology, phy2log: npt.ArrayLike) -> None:
        arr = np.asarray(phy2log, dtype=np.int64)
        want = (topology.num_layers, topology.num_physical)
        if arr.shape != want:
            raise PlacementError(f"phy2log: shape {arr.shape}, expected {want}")
        e = topology.num_logical_experts
        if arr.size and (arr.min() < 0 or arr.max() >= e):
            raise PlacementError(f"phy2log: expert ids must lie in [0, {e})")
        logcnt = np.zeros((topology.num_layers, e), dtype=np.int64)
        np.add.at(logcnt, (np.arange(topology.num_layers)[:, None], arr), 1)
        if (logcnt == 0).any():
            layer, expert = (int(v[0]) for v in np.nonzero(logcnt == 0))
            raise PlacementError(f"phy2log[{layer}]: expert {expert} has no slot")
        arr.setflags(write=False)
        logcnt.setflags(write=False)
        self.topology = topology
        self.phy2log: IntArray = arr
        self.logcnt: IntArray = logcnt

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Placement)
            and self.topology == other.topology
            and bool(np.array_equal(self.phy2log, other.phy2log))
        )

    def __hash__(self) -> int:
        return hash((self.topology, self.phy2log.tobytes()))

    def layer(self, index: int) -> LayerPlacement:
        """The data-plane view of one layer."""
        t = self.topology
        return LayerPlacement(
            tuple(int(v) for v in self.phy2log[index]), t.num_logical_experts, t.num_ranks
        )

    def log2phy(self) -> IntArray:
        """``[L, E, max_replicas]`` slots of each logical expert, padded with -1."""
        t = self.topology
        width = int(self.logcnt.max())
        out = np.full((t.num_layers, t.num_logical_experts, width), -1, dtype=np.int64)
        for layer in range(t.num_layers):
            fill = np.zeros(t.num_logical_experts, dtype=np.int64)
            for p, e in enumerate(self.phy2log[layer]):
                out[layer, e, fill[e]] = p
                fill[e] += 1
        return out

    def rank_loads(self, load: npt.ArrayLike) -> FloatArray:
        """``[L, R]`` tokens per rank when each expert's load is split evenly over its replicas."""
        w = check_load(load, self.topology)
        t = self.topology
        per_slot = np.take_along_axis(w / self.logcnt, self.phy2log, axis=1)
        out: FloatArray = per_slot.reshape(t.num_layers, t.num_ranks, t.slots_per_rank).sum(2)
        return out

    def node_loads(self, load: npt.ArrayLike) -> FloatArray:
        """``[L, N]`` tokens per node."""
        t = self.topology
        out: FloatArray = self.rank_loads(load).reshape(t.num_layers, t.num_nodes, -1).sum(2)
        return out

    def imbalance(self, load: npt.ArrayLike) -> float:
        """``sum_l max_r / sum_l mean_r``; 1.0 when the load is zero."""
        return imbalance_of(self.rank_loads(load))

    def per_layer_imbalance(self, load: npt.ArrayLike) -> FloatArray:
        """``[L]`` max/mean rank load per layer (1.0 for a layer without load)."""
        rl = self.rank_loads(load)
        mean = rl.mean(axis=1)
        out = np.ones(rl.shape[0])
        nz = mean > 0
        out[nz] = rl.max(axis=1)[nz] / mean[nz]
        return out

    def moved_slots(self, previous: Placement | None) -> int:
        """Slots whose expert differs from ``previous`` (expert weights to copy on switch-over)."""
        if previous is None or previous.phy2log.shape != self.phy2log.shape:
            return int(self.phy2log.size)
        return int((previous.phy2log != self.phy2log).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "topology": self.topology.to_dict(),
            "phy2log": self.phy2log.tolist(),
            "logical_count": self.logcnt.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        return cls(Topology(**data["topology"]), data["phy2log"])

    # Baselines --------------------------------------------------------------------------------

    @classmethod
    def round_robin(cls, topology: Topology) -> Placement:
        """Load-oblivious layout: slot ``i`` of rank ``r`` gets the ``(i * R + r)``-th expert.

        Logical experts are dealt to ranks like cards (expert ``e`` on rank ``e mod R``);
        redundant slots, dealt last, repeat experts 0, 1, ... in the same order. This is what a
        deployment runs without load statistics.
        """
        t = topology
        order = np.arange(t.num_physical) % t.num_logical_experts
        # Dealing: the j-th expert in order goes to rank j % R, local slot j // R.
        rank = np.arange(t.num_physical) % t.num_ranks
        local = np.arange(t.num_physical) // t.num_ranks
        row = np.empty(t.num_physical, dtype=np.int64)
        row[rank * t.slots_per_rank + local] = order
        return cls(t, np.tile(row, (t.num_layers, 1)))

    @classmethod
    def linear(cls, topology: Topology) -> Placement:
        """Contiguous blocks of experts per rank; redundant slots repeat experts 0, 1, ..."""
        t = topology
        row = np.arange(t.num_physical) % t.num_logical_experts
        return cls(t, np.tile(row, (t.num_layers, 1)))


def imbalance_of(rank_loads: npt.ArrayLike) -> float:
    """``sum_l max_r / sum_l mean_r`` of a ``[L, R]`` (or ``[R]``) rank-load array."""
    rl = np.atleast_2d(np.asarray(rank_loads, dtype=np.float64))
    mean = float(rl.mean(axis=1).sum())
    return 1.0 if mean <= 0 else float(rl.max(axis=1).sum()) / mean


def check_load(load: npt.ArrayLike, topology: Topology) -> FloatArray:
    """``load`` as a ``[L, E]`` float64 array, or ``PlacementError`` naming what is wrong."""
    w = np.asarray(load, dtype=np.float64)
    want = (topology.num_layers, topology.num_logical_experts)
    if w.shape != want:
        raise PlacementError(f"load: shape {w.shape}, expected {want}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise PlacementError("load: counts must be finite and >= 0")
    return w
