"""Speculative prefix entries: where the EPP has just sent a prefix, before any KV event says so.

Between a routing decision and the engine's first `BlockStored` event for the request lie its
queueing and its prefill: seconds on a loaded engine. A precise scorer sees nothing of that
prefix meanwhile and spreads the next requests sharing it by load, each one prefilling it again.
Upstream's `speculativeIndexing` fills the gap with entries written at the decision that expire
after `speculativeTTL`; by then the engine's own events have taken over (or the prefix was never
stored, and the guess ends).

The EPP does not hold the engine's block keys (kvmanager computes them), so entries are the
approximate scorer's chained character-block hashes (`prefix_index.hash_prompt`). Pure logic:
the caller passes the clock reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from llmd_epp.scheduling.prefix_index import leading_matches


class SpeculativeIndex:
    """hash -> {endpoint: expiry}, with entries dropped once `ttl` seconds old."""

    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("speculativeTTL: must be positive")
        self.ttl = ttl
        self._entries: dict[int, dict[str, float]] = {}
        # (expiry, hashes, endpoint) in expiry order: a constant TTL on a monotonic clock.
        self._expiring: deque[tuple[float, Sequence[int], str]] = deque()

    def __len__(self) -> int:
        """(hash, endpoint) entries held, expired ones not yet purged included."""
        return sum(len(holders) for holders in self._entries.values())

    def add(self, hashes: Sequence[int], endpoint: str, now: float) -> None:
        """`endpoint` was just sent the prefix `hashes` stands for."""
        self._purge(now)
        if not hashes:
            return
        expiry = now + self.ttl
        for h in hashes:
            self._entries.setdefault(h, {})[endpoint] = expiry
        self._expiring.append((expiry, hashes, endpoint))

    def match(self, hashes: Sequence[int], now: float) -> dict[str, int]:
        """Per endpoint, how many leading blocks of `hashes` it was sent within the TTL."""
        # Purging leaves only live entries: an expired one is dropped with its expiry's turn.
        self._purge(now)
        return leading_matches(hashes, self._entries)

    def remove_endpoint(self, endpoint: str) -> None:
        for h in [h for h, holders in self._entries.items() if endpoint in holders]:
            holders = self._entries[h]
            del holders[endpoint]
            if not holders:
                del self._entries[h]

    def _purge(self, now: float) -> None:
        queue = self._expiring
        while queue and queue[0][0] <= now:
            expiry, hashes, endpoint = queue.popleft()
            for h in hashes:
                holders = self._entries.get(h)
                # A later decision may have renewed the entry: only drop this one's.
                if holders is not None and holders.get(endpoint, expiry + 1) <= expiry:
                    del holders[endpoint]
                    if not holders:
                        del self._entries[h]
