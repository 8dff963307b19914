"""Request -> block keys, with the prefix caches: always exactly vLLM's hashes."""

from __future__ import annotations

import random

import pytest
from llmd_sdk.kvcache.hashing import BlockHasher, block_key
from llmd_sdk.kvcache.request_keys import BlockKeyCache, RequestKeyer, TokenCache, TwoGenCache


def expected(hasher: BlockHasher, ids: list[int], **kw: str | None) -> list[int]:
    return [block_key(d) for d in hasher.hash_tokens(ids, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash"])
def test_keys_match_vllm_hashes_cold_and_warm(algo: str) -> None:
    hasher = BlockHasher(algo, block_size=16, seed="0")
    cache = BlockKeyCache(hasher)
    rng = random.Random(1)
    base = [rng.randrange(200_000) for _ in range(16 * 20 + 5)]
    assert cache.keys(base) == expected(hasher, base)
    assert cache.blocks_hashed == 20
    # Same prefix, new suffix: only the new blocks are hashed.
    other = base[: 16 * 12] + [rng.randrange(200_000) for _ in range(16 * 3)]
    assert cache.keys(other) == expected(hasher, other)
    assert cache.blocks_hashed == 23
    assert cache.keys(base) == expected(hasher, base)
    assert cache.blocks_hashed == 23


def test_lora_and_cache_salt_change_the_keys_and_the_cache_keeps_them_apart() -> None:
    hasher = BlockHasher(block_size=4)
    cache = BlockKeyCache(hasher)
    ids = list(range(32))
    plain = cache.keys(ids)
    lora = cache.keys(ids, lora_name="ad", lora_path="/p")
    salted = cache.keys(ids, cache_salt="s")
    assert lora == expected(hasher, ids, lora_name="ad", lora_path="/p")
    assert salted == expected(hasher, ids, cache_salt="s")
    assert len({tuple(plain), tuple(lora), tuple(salted)}) == 3
    assert cache.keys(ids) == plain


def test_token_ids_beyond_32_bits_fall_back_to_plain_hashing() -> None:
    hasher = BlockHasher(block_size=2)
    ids = [1, 2**40, 3, 4]
    assert BlockKeyCache(hasher).keys(ids) == expected(hasher, ids)


def test_partial_block_is_not_keyed() -> None:
    assert BlockKeyCache(BlockHasher(block_size=16)).keys(list(range(15))) == []


def test_two_generation_cache_is_bounded_and_promotes() -> None:
    c: TwoGenCache[int, int] = TwoGenCache(4)
    for i in range(3):
        c.put(i, i)
    assert len(c) == 3
    assert c.lookup(0) == 0  # promoted from the old generation
    for i in range(10, 14):
        c.put(i, i)
    assert len(c) <= 4
    assert c.lookup(1) is None


class CountingTokenizer:
    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def apply_chat_template(self, messages: object) -> str:
        return "|".join(f"{m['role']}:{m['content']}" for m in messages)  # type: ignore[attr-defined]


def test_token_cache_skips_repeated_prompts_only() -> None:
    tok = CountingTokenizer()
    cache = TokenCache()
    assert cache.tokens(tok, "ab", True) == [1, 97, 98]
    assert cache.tokens(tok, "ab", True) == [1, 97, 98]
    assert tok.calls == 1
    assert cache.tokens(tok, "ab", False) == [97, 98]
    assert tok.calls == 2


def test_request_keyer_chat_renders_without_added_special_tokens() -> None:
    tok = CountingTokenizer()
    keyer = RequestKeyer(BlockHasher(block_size=2), tok, lora_paths={"ad": "/adapters/ad"})
    ids = keyer.tokens_for_chat([{"role": "user", "content": "hi"}])
    assert ids == [ord(c) for c in "user:hi"]
    assert keyer.keys(ids, lora_name="ad") == expected(
        keyer.hasher, ids, lora_name="ad", lora_path="/adapters/ad"
    )


def test_request_keyer_without_tokenizer_says_so() -> None:
    with pytest.raises(LookupError, match="no tokenizer"):
        RequestKeyer(BlockHasher()).tokens_for_prompt("x")
