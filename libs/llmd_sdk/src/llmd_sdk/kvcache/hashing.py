"""vLLM's prefix-cache block hashing, reproduced exactly.

A block's hash is ``hash_fn((parent_hash or NONE_HASH, tuple(block_token_ids), extra_keys))``
over full blocks only. ``hash_fn`` is chosen by vLLM's ``--prefix-caching-hash-algo``:

- ``sha256`` (default): SHA-256 of ``pickle.dumps(obj, protocol=HIGHEST_PROTOCOL)``
- ``sha256_cbor``: SHA-256 of ``cbor2.dumps(obj, canonical=True)``
- ``xxhash`` / ``xxhash_cbor``: xxh3_128 digest of the same two serialisations

``NONE_HASH = hash_fn(seed)``: the seed is ``PYTHONHASHSEED`` when set, else the string
``"vllm-none-hash"`` for the SHA-256 algorithms. The xxhash algorithms without ``PYTHONHASHSEED``
use a random per-process seed in vLLM, so their hashes cannot be reproduced by anyone else:
`BlockHasher.reproducible` says so and callers should tell the user.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import cbor2
import xxhash

HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
HASH_ALGOS: tuple[str, ...] = get_args(HashAlgo)

# How LoRA and cache_salt enter `extra_keys`. "tagged" is the contract in DESIGN.md
# (("lora", name, path) on every block, ("cache_salt", salt) on the first); "plain" is the older
# vLLM form (bare lora name, bare salt) for engines built before domain tagging.
ExtraKeyStyle = Literal["tagged", "plain"]

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
DEFAULT_BLOCK_SIZE = 16
_MASK64 = (1 << 64) - 1


def _sha256(obj: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def _xxhash(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _xxhash_cbor(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


_HASH_FUNCTIONS: dict[str, Callable[[Any], bytes]] = {
    "sha256": _sha256,
    "sha256_cbor": _sha256_cbor,
    "xxhash": _xxhash,
    "xxhash_cbor": _xxhash_cbor,
}


def hash_function(algo: str) -> Callable[[Any], bytes]:
    """The serialise-then-digest function vLLM uses for `algo`."""
    try:
        return _HASH_FUNCTIONS[algo]
    except KeyError:
        raise ValueError(
            f"prefix_caching_hash_algo: {algo!r} is not one of {', '.join(HASH_ALGOS)}"
        ) from None


def resolve_seed(algo: str, seed: str | None = None) -> tuple[str, bool]:
    """The NONE_HASH seed vLLM would use, and whether another process can reproduce it.

    An explicit `seed` stands for ``PYTHONHASHSEED``; without one the environment is read.
    """
    if seed is None:
        seed = os.environ.get("PYTHONHASHSEED")
    if seed is not None:
        return seed, True
    if algo.startswith("xxhash"):
        return os.urandom(32).hex(), False
    return DEFAULT_NONE_HASH_SEED, True


def block_key(block_hash: bytes | int) -> int:
    """Normalise either wire form of a block hash to one 64-bit int key.

    vLLM publishes the raw digest, or with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`` the digest
    read big-endian and masked to its low 64 bits. Both map to the same key here.
    """
    if isinstance(block_hash, int):
        return block_hash & _MASK64
    return int.from_bytes(block_hash[-8:], "big")


def to_external(block_hash: bytes, use_int: bool) -> bytes | int:
    """The form vLLM puts on the wire (`maybe_convert_block_hash`)."""
    if not use_int:
        return block_hash
    return int.from_bytes(block_hash, "big") & _MASK64


class BlockHasher:
    """Hashes token sequences into vLLM block hashes for one algorithm, seed and block size."""

    __slots__ = ("algo", "block_size", "extra_key_style", "hash_fn", "none_hash", "reproducible")

    def __init__(
        self,
        algo: str = "sha256",
        block_size: int = DEFAULT_BLOCK_SIZE,
        seed: str | None = None,
        extra_key_style: ExtraKeyStyle = "tagged",
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size: must be positive, got {block_size}")
        self.algo = algo
        self.block_size = block_size
        self.hash_fn = hash_function(algo)
        self.extra_key_style = extra_key_style
        resolved, self.reproducible = resolve_seed(algo, seed)
        self.none_hash: bytes = self.hash_fn(resolved)

    def hash_block(
        self,
        parent: bytes | None,
        token_ids: Sequence[int],
        extra_keys: tuple[Any, ...] | None = None,
    ) -> bytes:
        """One block: vLLM's `hash_block_tokens`."""
        return self.hash_fn((parent or self.none_hash, tuple(token_ids), extra_keys))

    def extra_keys(
        self,
        block_index: int,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
    ) -> tuple[Any, ...] | None:
        """The `extra_keys` of block `block_index` of a request (None when it has none)."""
        keys: list[Any] = []
        tagged = self.extra_key_style == "tagged"
        if lora_name:
            keys.append(("lora", lora_name, lora_path) if tagged else lora_name)
        if cache_salt and block_index == 0:
            keys.append(("cache_salt", cache_salt) if tagged else cache_salt)
        return tuple(keys) if keys else None

    def hash_tokens(
        self,
        token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
        parent: bytes | None = None,
        start_block: int = 0,
    ) -> list[bytes]:
        """Hashes of every full block of `token_ids`, chained from `parent`.

        `start_block` is the index of the first block of `token_ids` within the request, so a
        caller can resume hashing from a cached prefix (the cache_salt only keys block 0).
        """
        bs = self.block_size
        n_full = len(token_ids) // bs
        hashes: list[bytes] = []
        prev = parent
        plain = lora_name is None and cache_salt is None
        hash_fn, none_hash = self.hash_fn, self.none_hash
        for i in range(n_full):
            extra = (
                None
                if plain
                else self.extra_keys(start_block + i, lora_name, lora_path, cache_salt)
            )
            prev = hash_fn((prev or none_hash, tuple(token_ids[i * bs : (i + 1) * bs]), extra))
            hashes.append(prev)
        return hashes
