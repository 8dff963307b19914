"""Approximate prefix-cache state: what the EPP itself routed where.

The request text is cut into fixed-size character blocks and hashed as a chain (block i's hash
covers block i and the hash of block i-1; block 0 is keyed by the model and cache_salt), so a
block hash stands for the whole prefix up to it. Each endpoint keeps an LRU of the hashes routed
to it, bounded like the engine's KV cache; the index maps a hash to the endpoints holding it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import xxhash

from llmd_epp.scheduling.types import LLMRequest

AVERAGE_CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class PrefixMatch:
    """A request's prefix-cache standing: blocks in the request and, per endpoint key, how many
    leading blocks it holds. Written by the prefix scorers for other plugins (P/D decision,
    no-hit LRU) and for the hit-ratio metric."""

    total_blocks: int
    block_chars: int
    matches: dict[str, int] = field(default_factory=dict)
    hashes: Sequence[int] = ()

    def matched_chars(self, key: str) -> int:
        return self.matches.get(key, 0) * self.block_chars

    def hit_ratio(self, key: str) -> float:
        return self.matches.get(key, 0) / self.total_blocks if self.total_blocks else 0.0

    @property
    def cold(self) -> bool:
        """No endpoint holds any block of this request."""
        return not any(self.matches.values())


def hash_prompt(
    text: bytes, model: str, cache_salt: str | None, block_chars: int, max_blocks: int
) -> list[int]:
    """Chained 64-bit hashes of the full `block_chars` blocks of `text` (at most `max_blocks`)."""
    if block_chars <= 0 or len(text) < block_chars:
        return []
    n = min(len(text) // block_chars, max_blocks)
    seed_input = model.encode() + (cache_salt.encode() if cache_salt else b"")
    prev = xxhash.xxh64_intdigest(seed_input)
    out: list[int] = []
    digest = xxhash.xxh64_intdigest
    for i in range(n):
        start = i * block_chars
        prev = digest(text[start : start + block_chars] + prev.to_bytes(8, "little"))
        out.append(prev)
    return out


def request_hashes(
    request: LLMRequest, state_key: str, block_chars: int, max_blocks: int
) -> list[int]:
    """`hash_prompt` over the request's text for its model and cache_salt, computed once per
    request: the result is kept in `request.state[state_key]`."""
    found = request.state.get(state_key)
    if isinstance(found, list):
        return found
    hashes = hash_prompt(
        request.user_input(),
        request.target_model or request.model,
        request.cache_salt,
        block_chars,
        max_blocks,
    )
    request.state[state_key] = hashes
    return hashes


def leading_matches(
    hashes: Sequence[int], holders: Mapping[int, Collection[str]]
) -> dict[str, int]:
    """Per endpoint, the number of leading blocks of `hashes` it holds (zeros left out), given
    each chained hash's holders."""
    if not hashes:
        return {}
    first = holders.get(hashes[0])
    if not first:
        return {}
    active = set(first)
    out: dict[str, int] = {}
    depth = 1
    for h in hashes[1:]:
        owners = holders.get(h)
        if not owners:
            break
        stay = active.intersection(owners)
        if len(stay) != len(active):
            for ep in active - stay:
                out[ep] = depth
            active = stay
            if not active:
                break
        depth += 1
    for ep in active:
        out[ep] = depth
    return out


class ApproxPrefixIndex:
    """hash -> endpoints holding it, with a bounded LRU of hashes per endpoint."""

    def __init__(self, default_capacity: int) -> None:
        if default_capacity <= 0:
            raise ValueError("lruCapacityPerServer: must be positive")
        self.default_capacity = default_capacity
        self._holders: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def __len__(self) -> int:
        """(hash, endpoint) entries held."""
        return sum(len(lru) for lru in self._lru.values())

    def endpoints(self) -> list[str]:
        return list(self._lru)

    def add(self, hashes: Iterable[int], endpoint: str, capacity: int | None = None) -> None:
        cap = capacity if capacity and capacity > 0 else self.default_capacity
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        holders = self._holders
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            holders.setdefault(h, set()).add(endpoint)
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            self._drop(old, endpoint)

    def _drop(self, h: int, endpoint: str) -> None:
        owners = self._holders.get(h)
        if owners is not None:
            owners.discard(endpoint)
            if not owners:
                del self._holders[h]

    def remove_endpoint(self, endpoint: str) -> None:
        lru = self._lru.pop(endpoint, None)
        if lru:
            for h in lru:
                self._drop(h, endpoint)

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Per endpoint, the number of leading blocks of `hashes` it holds (zeros left out)."""
        return leading_matches(hashes, self._holders)
