"""Expert-parallel load balancing: replicate hot experts and pack slots onto ranks.

The policy follows the approach DeepSeek published with EPLB (the algorithm, not its code):

Hierarchical (``num_groups`` divisible by ``num_nodes``, several nodes)
    1. Pack the expert *groups* of group-limited routing onto nodes, the same number of groups
       per node, balancing node load. Tokens routed to one group then stay inside one node.
    2. Inside each node, give the node's ``P / N`` slots to its experts: every expert gets one
       and each extra slot goes to the expert whose per-replica load is currently highest
       (greedy; optimal for minimising the heaviest replica), but no expert gets more replicas
       than the node has GPUs (more could not split any GPU's load further).
    3. Pack the node's replicas onto its GPUs, the same number of slots per GPU, balancing GPU
       load.

Global (otherwise: one node, or groups that do not divide over the nodes)
    Steps 2 and 3 over the whole group, ignoring nodes.

Packing is greedy longest-processing-time with a slot capacity per pack, then improved by
pairwise swaps between the heaviest pack and lighter ones. Two replicas of one expert are not put
on the same GPU when another GPU has room (they would not split that GPU's load). Finally
``align`` renumbers nodes, GPUs and slots of a new placement to keep as many experts as possible
where the previous placement had them, which leaves balance unchanged and cuts the weights that
must move on switch-over.

Pure numpy; deterministic for a given input.
"""

from __future__ import annotations

import heapq
from collections import Counter

import numpy as np
import numpy.typing as npt

from llmd_expert_router.placement import (
    FloatArray,
    IntArray,
    Placement,
    PlacementError,
    Topology,
    check_load,
)

_EPS = 1e-9


def replicate(weights: npt.ArrayLike, num_slots: int, max_count: int | None = None) -> IntArray:
    """Replica count per item such that the heaviest ``weight / count`` is as small as possible.

    Every item gets one slot; each of the remaining ``num_slots - n`` goes to the item with the
    largest per-replica weight at that moment (ties to the lower index), among items below
    ``max_count`` replicas. The balancer caps replicas at the number of GPUs they can spread
    over: two replicas on one GPU do not split that GPU's load.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    if num_slots < n:
        raise PlacementError(f"num_slots: {num_slots} slots cannot hold {n} experts")
    cap = num_slots if max_count is None else max(1, max_count)
    if n * cap < num_slots:
        cap = -(-num_slots // n)  # every slot must be used: relax the cap evenly
    counts = np.ones(n, dtype=np.int64)
    heap = [(-float(w[i]), i) for i in range(n)]
    heapq.heapify(heap)
    for _ in range(num_slots - n):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < cap:
            heapq.heappush(heap, (-float(w[i]) / float(counts[i]), i))
    return counts


def pack(
    weights: npt.ArrayLike,
    num_packs: int,
    labels: npt.ArrayLike | None = None,
    *,
    refine: bool = True,
) -> IntArray:
    """Assign ``n`` items to ``num_packs`` packs of exactly ``n / num_packs`` items each.

    Minimises the heaviest pack heuristically. Items that share a label (replicas of one expert)
    go to different packs whenever capacity allows.

    Returns:
        ``[n]`` pack index of each item.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    if num_packs < 1 or n % num_packs:
        raise PlacementError(f"num_packs: {n} items do not divide into {num_packs} packs")
    cap = n // num_packs
    lab = np.arange(n) if labels is None else np.asarray(labels, dtype=np.int64)
    num_labels = int(lab.max()) + 1 if n else 0
    has = np.zeros((num_packs, num_labels), dtype=bool)
    load = np.zeros(num_packs)
    count = np.zeros(num_packs, dtype=np.int64)
    pack_of = np.empty(n, dtype=np.int64)
    for i in np.lexsort((np.arange(n), -w)):  # heaviest first, ties by index
        open_ = count < cap
        fresh = open_ & ~has[:, lab[i]]
        cand = fresh if fresh.any() else open_
        p = int(np.argmin(np.where(cand, load, np.inf)))
        pack_of[i] = p
        load[p] += w[i]
        count[p] += 1
        has[p, lab[i]] = True
    if refine and num_packs > 1 and cap > 0:
        _refine(w, lab, pack_of, load, has, num_packs)
    return pack_of


def _refine(
    w: FloatArray,
    lab: IntArray,
    pack_of: IntArray,
    load: FloatArray,
    has: npt.NDArray[np.bool_],
    num_packs: int,
) -> None:
    """Swap items between the heaviest pack and lighter ones while that lowers the heaviest."""
    for _ in range(4 * w.shape[0]):
        h = int(np.argmax(load))
        swapped = False
        for lo in np.argsort(load, kind="stable"):
            lo = int(lo)
            gap = load[h] - load[lo]
            if lo == h or gap <= _EPS:
                break
            a = np.flatnonzero(pack_of == h)
            b = np.flatnonzero(pack_of == lo)
            d = w[a][:, None] - w[b][None, :]
            # Moving a -> lo and b -> h leaves both packs below load[h] iff 0 < d < gap.
            ok = (d > _EPS) & (d < gap - _EPS)
            # No duplicate labels: a's label must be new to lo, b's to h (unless they are equal).
            ok &= (~has[lo, lab[a]])[:, None] | (lab[a][:, None] == lab[b][None, :])
            ok &= (~has[h, lab[b]])[None, :] | (lab[a][:, None] == lab[b][None, :])
            if not ok.any():
                continue
            score = np.where(ok, np.abs(d - gap / 2), np.inf)
            ia, ib = np.unravel_index(int(np.argmin(score)), score.shape)
            i, j = int(a[ia]), int(b[ib])
            delta = w[i] - w[j]
            has[h, lab[i]] = False
            has[lo, lab[j]] = False
            pack_of[i], pack_of[j] = lo, h
            has[lo, lab[i]] = True
            has[h, lab[j]] = True
            load[h] -= delta
            load[lo] += delta
            swapped = True
            break
        if not swapped:
            return


def uses_hierarchy(topology: Topology) -> bool:
    """Whether the hierarchical policy applies (several nodes, groups divisible over them)."""
    t = topology
    return t.num_nodes > 1 and t.num_groups is not None and t.num_groups % t.num_nodes == 0


def rebalance(
    load: npt.ArrayLike,
    topology: Topology,
    *,
    hierarchical: bool | None = None,
    refine: bool = True,
) -> Placement:
    """A balanced placement for ``load`` (``[L, E]`` tokens per logical expert).

    ``hierarchical``: ``None`` picks the policy by DeepSeek's rule (``uses_hierarchy``); ``True``
    forces the hierarchical one (it must apply); ``False`` forces the global one.
    """
    w = check_load(load, topology)
    if hierarchical is None:
        hierarchical = uses_hierarchy(topology)
    elif hierarchical and not uses_hierarchy(topology):
        raise PlacementError(
            "hierarchical: needs num_nodes > 1 and num_groups divisible by num_nodes"
        )
    rows = [_balance_layer(w[i], topology, hierarchical, refine) for i in range(w.shape[0])]
    return Placement(topology, np.stack(rows))


def _balance_layer(w: FloatArray, t: Topology, hierarchical: bool, refine: bool) -> IntArray:
    if hierarchical:
        assert t.num_groups is not None
        groups, nodes = t.num_groups, t.num_nodes
    else:
        groups, nodes = 1, 1
    group_size = t.num_logical_experts // groups
    node_of_group = pack(w.reshape(groups, group_size).sum(axis=1), nodes, refine=refine)
    ranks_per_node = t.num_ranks // nodes
    slots_per_node = t.num_physical // nodes
    s = t.slots_per_rank
    row = np.empty(t.num_physical, dtype=np.int64)
    for node in range(nodes):
        node_groups = np.flatnonzero(node_of_group == node)
        experts = (node_groups[:, None] * group_size + np.arange(group_size)).ravel()
        counts = replicate(w[experts], slots_per_node, max_count=ranks_per_node)
        item_expert = np.repeat(experts, counts)
        item_weight = np.repeat(w[experts] / counts, counts)
        rank_of_item = pack(item_weight, ranks_per_node, item_expert, refine=refine)
        for lr in range(ranks_per_node):
            start = (node * ranks_per_node + lr) * s
            row[start : start + s] = np.sort(item_expert[rank_of_item == lr])
    return row


def align(new: Placement, previous: Placement | None) -> Placement:
    """``new`` with nodes, ranks and slots renumbered to move as few experts as possible.

    Renumbering whole nodes, ranks inside a node, and slots inside a rank changes no rank's set of
    experts, so the imbalance is exactly that of ``new``.
    """
    if previous is None or previous.topology != new.topology:
        return new
    t = new.topology
    s, rpn = t.slots_per_rank, t.ranks_per_node
    rows = np.empty_like(new.phy2log)
    for layer in range(t.num_layers):
        cur = new.phy2log[layer].reshape(t.num_nodes, rpn, s)
        old = previous.phy2log[layer].reshape(t.num_nodes, rpn, s)
        out = np.empty_like(cur)
        node_match = _match(
            [Counter(cur[i].ravel().tolist()) for i in range(t.num_nodes)],
            [Counter(old[j].ravel().tolist()) for j in range(t.num_nodes)],
        )
        for i, j in node_match.items():
            rank_match = _match(
                [Counter(cur[i, a].tolist()) for a in range(rpn)],
                [Counter(old[j, b].tolist()) for b in range(rpn)],
            )
            for a, b in rank_match.items():
                out[j, b] = _keep_slots(cur[i, a], old[j, b])
        rows[layer] = out.ravel()
    return Placement(t, rows)


def _match(new: list[Counter[int]], old: list[Counter[int]]) -> dict[int, int]:
    """Greedy maximum-overlap matching of new bins to old bins (new index -> old index)."""
    pairs = sorted(
        ((-sum((a & b).values()), i, j) for i, a in enumerate(new) for j, b in enumerate(old)),
    )
    used_new: set[int] = set()
    used_old: set[int] = set()
    out: dict[int, int] = {}
    for _, i, j in pairs:
        if i not in used_new and j not in used_old:
            out[i] = j
            used_new.add(i)
            used_old.add(j)
    return out


def _keep_slots(new_slots: IntArray, old_slots: IntArray) -> IntArray:
    """Order ``new_slots`` so experts already in ``old_slots`` keep their slot index."""
    out = np.full_like(new_slots, -1)
    pending = Counter(new_slots.tolist())
    for k, e in enumerate(old_slots.tolist()):
        if pending[e] > 0:
            out[k] = e
            pending[e] -= 1
    rest = sorted(pending.elements())
    free = np.flatnonzero(out == -1)
    out[free] = rest
    return out
