"""A small bounded cache for hot paths (block keys, token ids, tokenizer chunks)."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TwoGenCache(Generic[K, V]):
    """A bounded map with LRU-like eviction: a young and an old dict; a hit in the old one is
    promoted; when the young one fills up it becomes the old one. Cheaper per access than an
    ordered dict, and safe to share between threads under the GIL (a race can only lose an
    entry or a count, never raise)."""

    __slots__ = ("half", "hits", "misses", "old", "young")

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"cache capacity: must be at least 2, got {capacity}")
        self.half = capacity // 2
        self.young: dict[K, V] = {}
        self.old: dict[K, V] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def lookup(self, key: K) -> V | None:
        v = self.young.get(key)
        if v is None:
            v = self.old.get(key)
            if v is None:
                self.misses += 1
                return None
            self.put(key, v)
        self.hits += 1
        return v

    def put(self, key: K, value: V) -> None:
        if len(self.young) >= self.half:
            self.old, self.young = self.young, {}
        self.young[key] = value
