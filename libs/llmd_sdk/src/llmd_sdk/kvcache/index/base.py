"""The KV-block index interface: (model, block key) -> holders, and the operations that change it.

A *holder* is one copy of a block: the endpoint ("ip:port") of the engine, the medium it sits on
("GPU", "CPU", "STORAGE") and the engine's data-parallel rank (-1 when the engine sends none).
Block keys are the 64-bit ints of `llmd_sdk.kvcache.hashing.block_key`, so both wire forms of a
vLLM block hash land on the same key.

Writers send batches of `IndexOp` (built by the pure `EventApplier`); readers ask `lookup` for the
holder sets of consecutive block keys, which stops at the first key nobody holds (a prefix match
cannot extend past it). Every backend passes the same test suite.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

MEDIUM_GPU = "GPU"
MEDIUM_CPU = "CPU"
MEDIUM_STORAGE = "STORAGE"
MEDIUMS: tuple[str, ...] = (MEDIUM_GPU, MEDIUM_CPU, MEDIUM_STORAGE)
NO_RANK = -1


class Holder(NamedTuple):
    """One copy of a block: which engine, on which medium, on which data-parallel rank."""

    endpoint: str
    medium: str = MEDIUM_GPU
    rank: int = NO_RANK


HolderSet = Collection[Holder]


@dataclass(frozen=True, slots=True)
class StoreBlocks:
    """`holder` now holds every block of `keys` (a vLLM ``BlockStored``)."""

    model: str
    holder: Holder
    keys: Sequence[int]


@dataclass(frozen=True, slots=True)
class RemoveBlocks:
    """`holder` no longer holds the blocks of `keys` (a vLLM ``BlockRemoved``)."""

    model: str
    holder: Holder
    keys: Sequence[int]


@dataclass(frozen=True, slots=True)
class ClearEndpoint:
    """Drop every entry of `endpoint` (``AllBlocksCleared``, a resync, or leaving the pool).

    `model` None means all models; `rank` None means all data-parallel ranks.
    """

    endpoint: str
    model: str | None = None
    rank: int | None = None


IndexOp = StoreBlocks | RemoveBlocks | ClearEndpoint


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Distinct (model, block) keys, (key, holder) entries, and blocks dropped for capacity."""

    keys: int
    entries: int
    evictions: int = 0


class KVBlockIndex(abc.ABC):
    """A backend of the global KV-block index."""

    @abc.abstractmethod
    async def apply(self, ops: Sequence[IndexOp]) -> None:
        """Apply `ops` in order (one engine's batch)."""

    @abc.abstractmethod
    async def lookup(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        """Holder sets of `keys` in order, stopping before the first key that nobody holds.

        The returned collections must be treated as read-only. Consecutive keys with the same
        holders may return equal (often identical) collections, which scorers exploit.
        """

    @abc.abstractmethod
    async def endpoints(self, model: str | None = None) -> list[str]:
        """Endpoints holding at least one block (of `model`, or of any model), sorted."""

    @abc.abstractmethod
    async def blocks_of(self, model: str, endpoint: str) -> dict[Holder, set[int]]:
        """Every block key `endpoint` holds for `model`, per holder (medium and rank)."""

    async def counts_of(self, model: str, endpoint: str) -> dict[Holder, int]:
        """How many blocks `endpoint` holds for `model`, per holder (cheap: no key lists)."""
        return {h: len(keys) for h, keys in (await self.blocks_of(model, endpoint)).items()}

    @abc.abstractmethod
    async def stats(self) -> IndexStats:
        """Current size."""

    async def clear_endpoint(
        self, endpoint: str, model: str | None = None, rank: int | None = None
    ) -> None:
        """Purge an endpoint (for example when it leaves the pool)."""
        await self.apply([ClearEndpoint(endpoint, model, rank)])

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""
