"""Block-hash vectors built by hand from vLLM's published recipe.

The serialisations are written out byte by byte here (pickle protocol 5 with framing and memo
opcodes; canonical CBOR), independent of `pickle`/`cbor2`, then digested with SHA-256 or xxh3-128.
The engine's hasher must produce exactly these digests, and its KV events must carry them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import xxhash
from llmd_sdk.kvcache.hashing import BlockHasher, block_key, to_external
from llmd_sim.engine import EngineConfig, EngineCore, LoRA, Request
from llmd_sim.latency import LatencyModel, zero_profile


# ----- pickle protocol 5, by hand ------------------------------------------------------------
def _p_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + v.to_bytes(2, "little")
    return b"J" + v.to_bytes(4, "little", signed=True)


def _p_obj(o: Any) -> bytes:
    memo = b"\x94"  # MEMOIZE after every str, bytes and tuple
    if o is None:
        return b"N"
    if isinstance(o, int):
        return _p_int(o)
    if isinstance(o, str):
        raw = o.encode()
        return b"\x8c" + bytes([len(raw)]) + raw + memo  # SHORT_BINUNICODE
    if isinstance(o, bytes):
        return b"C" + bytes([len(o)]) + o + memo  # SHORT_BINBYTES
    if isinstance(o, tuple):
        items = b"".join(_p_obj(x) for x in o)
        if 1 <= len(o) <= 3:
            return items + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(o)] + memo  # TUPLE1..3
        return b"(" + items + b"t" + memo  # MARK ... TUPLE
    raise TypeError(type(o))


def pickle_by_hand(o: Any) -> bytes:
    body = _p_obj(o) + b"."
    return b"\x80\x05" + b"\x95" + len(body).to_bytes(8, "little") + body  # PROTO 5, FRAME


# ----- canonical CBOR, by hand ----------------------------------------------------------------
def _c_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    if n < 65536:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    return bytes([major << 5 | 26]) + n.to_bytes(4, "big")


def cbor_by_hand(o: Any) -> bytes:
    if o is None:
        return b"\xf6"
    if isinstance(o, int):
        return _c_head(0, o)
    if isinstance(o, bytes):
        return _c_head(2, len(o)) + o
    if isinstance(o, str):
        raw = o.encode()
        return _c_head(3, len(raw)) + raw
    if isinstance(o, tuple):
        return _c_head(4, len(o)) + b"".join(cbor_by_hand(x) for x in o)
    raise TypeError(type(o))


DIGEST = {
    "sha256": lambda o: hashlib.sha256(pickle_by_hand(o)).digest(),
    "sha256_cbor": lambda o: hashlib.sha256(cbor_by_hand(o)).digest(),
    "xxhash": lambda o: xxhash.xxh3_128_digest(pickle_by_hand(o)),
    "xxhash_cbor": lambda o: xxhash.xxh3_128_digest(cbor_by_hand(o)),
}

BLOCK0 = tuple(range(1000, 1016))
BLOCK1 = (7, 300, 70000, *range(13))


@pytest.mark.parametrize("algo", sorted(DIGEST))
def test_chain_matches_the_recipe(algo: str) -> None:
    seed = "vllm-none-hash" if algo.startswith("sha") else "1234"
    digest = DIGEST[algo]
    none_hash = digest(seed)
    h0 = digest((none_hash, BLOCK0, None))
    h1 = digest((h0, BLOCK1, None))
    hasher = BlockHasher(algo, 16, seed=None if algo.startswith("sha") else "1234")
    assert hasher.none_hash == none_hash
    assert hasher.hash_tokens([*BLOCK0, *BLOCK1, 1, 2, 3]) == [h0, h1]  # partial block ignored


def test_seed_from_pythonhashseed_and_reproducibility(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    assert BlockHasher("sha256").none_hash == DIGEST["sha256"]("42")
    assert BlockHasher("xxhash").reproducible
    monkeypatch.delenv("PYTHONHASHSEED")
    assert not BlockHasher("xxhash").reproducible  # random per process, as in vLLM
    assert BlockHasher("sha256").reproducible


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
def test_lora_and_cache_salt_extra_keys(algo: str) -> None:
    digest = DIGEST[algo]
    none_hash = digest("vllm-none-hash")
    lora = ("lora", "sql-adapter", "/adapters/sql")
    h0 = digest((none_hash, BLOCK0, (lora, ("cache_salt", "s3cr3t"))))
    h1 = digest((h0, BLOCK1, (lora,)))
    hasher = BlockHasher(algo, 16)
    got = hasher.hash_tokens(
        [*BLOCK0, *BLOCK1],
        lora_name="sql-adapter",
        lora_path="/adapters/sql",
        cache_salt="s3cr3t",
    )
    assert got == [h0, h1]


def test_int_wire_form_is_low_64_bits_big_endian() -> None:
    h = DIGEST["sha256"]((DIGEST["sha256"]("vllm-none-hash"), BLOCK0, None))
    as_int = int.from_bytes(h, "big") & ((1 << 64) - 1)
    assert to_external(h, use_int=True) == as_int
    assert block_key(h) == block_key(as_int) == as_int


@pytest.mark.parametrize("use_int", [False, True])
def test_engine_events_carry_the_recipe_hashes(use_int: bool) -> None:
    digest = DIGEST["sha256"]
    none_hash = digest("vllm-none-hash")
    h0 = digest((none_hash, BLOCK0, (("lora", "a", "/a"),)))
    h1 = digest((h0, BLOCK1, (("lora", "a", "/a"),)))
    eng = EngineCore(
        EngineConfig(num_gpu_blocks=16, max_num_batched_tokens=64, max_num_seqs=4),
        LatencyModel(zero_profile()),
        BlockHasher("sha256", 16),
        enable_kv_events=True,
        use_int_hashes=use_int,
    )
    eng.add_request(
        Request("r", [*BLOCK0, *BLOCK1, 5], [9], lora=LoRA("a", 3, "/a"))  # 33 prompt tokens
    )
    events = eng.step(0.0).events
    stored = events[0]
    expect = [to_external(h0, use_int), to_external(h1, use_int)]
    assert stored.block_hashes == expect
    assert stored.parent_block_hash is None
    assert stored.token_ids == [*BLOCK0, *BLOCK1]
    assert (stored.lora_id, stored.lora_name, stored.medium) == (3, "a", "GPU")
    assert stored.extra_keys == [(("lora", "a", "/a"),)] * 2
