"""The indexer as a library: prompts, chats and token ids scored against an index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from llmd_sdk.kvcache.hashing import BlockHasher, block_key
from llmd_sdk.kvcache.index import Holder, InMemoryIndex, KVBlockIndex, StoreBlocks
from llmd_sdk.kvcache.indexer import PrefixCacheIndexer, UnknownModelError
from llmd_sdk.kvcache.request_keys import RequestKeyer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo frogs"


class SmallBPE:
    """A real byte-level BPE (tokenizers), trained here, with a ChatML-like template."""

    def __init__(self) -> None:
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(
            [WORDS] * 50,
            trainers.BpeTrainer(
                vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            ),
        )
        self.tok = tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


MODEL = "m"


@pytest.fixture
def keyer() -> RequestKeyer:
    return RequestKeyer(BlockHasher(block_size=4), SmallBPE(), lora_paths={"ad": "/adapters/ad"})


async def held_by(
    index: KVBlockIndex,
    keyer: RequestKeyer,
    ids: list[int],
    endpoint: str,
    n_blocks: int,
    **kw: Any,
) -> None:
    keys = [block_key(d) for d in keyer.hasher.hash_tokens(ids, **kw)]
    await index.apply([StoreBlocks(MODEL, Holder(endpoint), keys[:n_blocks])])


async def test_prompt_scores(index: KVBlockIndex, keyer: RequestKeyer) -> None:
    prompt = " ".join([WORDS] * 3)
    ids = keyer.tokenizer.encode(prompt)  # type: ignore[union-attr]
    assert len(ids) >= 24
    await held_by(index, keyer, ids, "a:1", 5)
    await held_by(index, keyer, ids, "b:1", 2)
    ix = PrefixCacheIndexer(index, {MODEL: keyer})
    res = await ix.score_prompt(MODEL, prompt)
    assert res.prompt_tokens == len(ids)
    assert res.total_blocks == len(ids) // 4
    assert [(s.endpoint, s.matched_blocks) for s in res.scores] == [("a:1", 5), ("b:1", 2)]
    assert set(res.timings) == {"tokenize", "hash", "score"}
    again = await ix.score_prompt(MODEL, prompt, candidates=["b:1", "c:1"])
    assert [(s.endpoint, s.matched_blocks) for s in again.scores] == [("b:1", 2), ("c:1", 0)]
    assert keyer.token_cache.cache.hits == 1


async def test_chat_and_lora(index: KVBlockIndex, keyer: RequestKeyer) -> None:
    messages = [{"role": "user", "content": WORDS}]
    ids = keyer.tokenizer.encode(keyer.tokenizer.apply_chat_template(messages), False)  # type: ignore[union-attr]
    await held_by(index, keyer, ids, "a:1", 3, lora_name="ad", lora_path="/adapters/ad")
    ix = PrefixCacheIndexer(index, {MODEL: keyer})
    with_lora = await ix.score_chat(MODEL, messages, ["a:1"], lora_name="ad")
    without = await ix.score_chat(MODEL, messages, ["a:1"])
    salted = await ix.score_chat(MODEL, messages, ["a:1"], lora_name="ad", cache_salt="s")
    assert [
        s.matched_blocks for s in (with_lora.scores[0], without.scores[0], salted.scores[0])
    ] == [3, 0, 0]


async def test_unknown_models(index: KVBlockIndex, keyer: RequestKeyer) -> None:
    strict = PrefixCacheIndexer(index, {MODEL: keyer})
    with pytest.raises(UnknownModelError, match="'other' is not configured"):
        await strict.score_tokens("other", [1, 2, 3, 4])
    lenient = PrefixCacheIndexer(
        index, {}, default_keyer=lambda m: RequestKeyer(BlockHasher(block_size=4))
    )
    ids = list(range(12))
    keys = [block_key(d) for d in BlockHasher(block_size=4).hash_tokens(ids)]
    await index.apply([StoreBlocks("other", Holder("a:1"), keys)])
    res = await lenient.score_tokens("other", ids)
    assert [(s.endpoint, s.matched_blocks) for s in res.scores] == [("a:1", 3)]


async def test_in_memory_index_is_usable_without_a_loop_sync_api(keyer: RequestKeyer) -> None:
    idx = InMemoryIndex()
    ids = list(range(16))
    keys = keyer.keys(ids)
    idx.apply_sync([StoreBlocks(MODEL, Holder("a:1", "CPU"), keys)])
    got = PrefixCacheIndexer(idx, {MODEL: keyer}).scorer.score(
        idx.lookup_sync(MODEL, keys), ["a:1"]
    )
    assert (got[0].matched_blocks, got[0].score) == (4, pytest.approx(3.2))
