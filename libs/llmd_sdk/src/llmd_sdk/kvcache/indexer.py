"""The prefix-cache indexer as a library: request in, per-endpoint prefix scores out.

This is what kvmanager's ``KVIndex.Score`` serves and what the EPP's precise-prefix-cache-scorer
may embed instead of calling kvmanager: a `KVBlockIndex` (fed by a `KVEventSubscriber`), one
`RequestKeyer` per model (tokenizer, hash algorithm and seed, block size, LoRA paths) and a
`PrefixScorer` (tier weights).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.kvcache.index.base import KVBlockIndex
from llmd_sdk.kvcache.request_keys import RequestKeyer
from llmd_sdk.kvcache.scorer import EndpointScore, PrefixScorer


@dataclass(slots=True)
class ScoreResult:
    """Scores of the candidate endpoints for one request."""

    scores: list[EndpointScore]
    total_blocks: int
    prompt_tokens: int
    block_size: int
    # Seconds spent: tokenize (0 when token ids were given), hash, lookup + score.
    timings: dict[str, float] = field(default_factory=dict)

    def by_endpoint(self) -> dict[str, EndpointScore]:
        return {s.endpoint: s for s in self.scores}


class UnknownModelError(LookupError):
    """The request names a model the indexer has no keyer for."""


class PrefixCacheIndexer:
    """Scores requests against a KV-block index."""

    def __init__(
        self,
        index: KVBlockIndex,
        keyers: Mapping[str, RequestKeyer],
        scorer: PrefixScorer | None = None,
        default_keyer: Callable[[str], RequestKeyer] | None = None,
    ) -> None:
        self.index = index
        self.keyers: dict[str, RequestKeyer] = dict(keyers)
        self.scorer = scorer or PrefixScorer()
        self._default_keyer = default_keyer

    def keyer(self, model: str) -> RequestKeyer:
        k = self.keyers.get(model)
        if k is None:
            if self._default_keyer is None:
                raise UnknownModelError(f"model: {model!r} is not configured")
            k = self.keyers[model] = self._default_keyer(model)
        return k

    async def score_keys(
        self, model: str, keys: Sequence[int], candidates: Sequence[str] | None = None
    ) -> list[EndpointScore]:
        """Scores given the block keys (for callers that hash themselves)."""
        holder_sets = await self.index.lookup(model, keys)
        if not candidates:
            candidates = await self.index.endpoints(model)
        return self.scorer.score(holder_sets, candidates)

    async def score_tokens(
        self,
        model: str,
        token_ids: Sequence[int],
        candidates: Sequence[str] | None = None,
        lora_name: str | None = None,
        cache_salt: str | None = None,
        _t_tok: float = 0.0,
    ) -> ScoreResult:
        """Scores for a request already tokenized."""
        keyer = self.keyer(model)
        t0 = time.perf_counter()
        keys = keyer.keys(token_ids, lora_name=lora_name, cache_salt=cache_salt)
        t1 = time.perf_counter()
        scores = await self.score_keys(model, keys, candidates)
        t2 = time.perf_counter()
        return ScoreResult(
            scores=scores,
            total_blocks=len(keys),
            prompt_tokens=len(token_ids),
            block_size=keyer.block_size,
            timings={"tokenize": _t_tok, "hash": t1 - t0, "score": t2 - t1},
        )

    async def score_prompt(
        self,
        model: str,
        prompt: str,
        candidates: Sequence[str] | None = None,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> ScoreResult:
        """Scores for a completions prompt (tokenized with the model's tokenizer)."""
        t0 = time.perf_counter()
        ids = self.keyer(model).tokens_for_prompt(prompt)
        return await self.score_tokens(
            model, ids, candidates, lora_name, cache_salt, time.perf_counter() - t0
        )

    async def score_chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        candidates: Sequence[str] | None = None,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> ScoreResult:
        """Scores for chat messages (rendered with the model's chat template, then tokenized)."""
        t0 = time.perf_counter()
        ids = self.keyer(model).tokens_for_chat(messages)
        return await self.score_tokens(
            model, ids, candidates, lora_name, cache_salt, time.perf_counter() - t0
        )
