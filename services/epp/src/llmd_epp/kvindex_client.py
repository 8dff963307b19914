"""kvmanager's `KVIndex.Score` over gRPC, as a prefix-score source for the precise scorer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from llmd_sdk.contracts import kvindex, kvindex_grpc

from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrefixScores
from llmd_epp.scheduling.types import LLMRequest


class KVIndexClient:
    def __init__(self, address: str, timeout: float = 0.1) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: kvindex_grpc.KVIndexStub | None = None

    def _ensure(self) -> kvindex_grpc.KVIndexStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.address)
            self._stub = kvindex_grpc.KVIndexStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    @staticmethod
    def build_request(request: LLMRequest, endpoints: Sequence[str]) -> kvindex.ScoreRequest:
        req = kvindex.ScoreRequest(
            model=request.target_model or request.model,
            candidate_endpoints=list(endpoints),
            lora_name=request.lora_adapter or "",
            cache_salt=request.cache_salt or "",
        )
        if request.token_ids:
            req.token_ids.ids.extend(int(t) for t in request.token_ids)
        elif request.messages:
            for m in request.messages:
                req.chat.messages.add(
                    role=str(m.get("role", "")), content=str(m.get("content", ""))
                )
        else:
            req.prompt = request.prompt
        return req

    async def connect(self, timeout: float = 2.0) -> bool:
        """Open the channel ahead of the first request (False when kvmanager is not up yet;
        requests then score without prefix data until it is)."""
        self._ensure()
        assert self._channel is not None
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def score(self, request: LLMRequest, endpoints: Sequence[str]) -> PrefixScores:
        stub = self._ensure()
        resp = await stub.Score(self.build_request(request, endpoints), timeout=self.timeout)
        return self.scores_from(resp)

    @staticmethod
    def scores_from(resp: kvindex.ScoreResponse) -> PrefixScores:
        """The scorer's view of a `ScoreResponse`: per endpoint its match, and where the index
        knows data-parallel ranks, the rank holding the longest match with that match (kvmanager
        answers one entry per endpoint; the max guards against a server answering one per
        rank)."""
        out = PrefixScores(
            total_blocks=int(resp.total_blocks), block_size=int(resp.block_size) or 16
        )
        for s in resp.scores:
            matched, score = int(s.matched_blocks), float(s.score)
            if matched >= out.matched.get(s.endpoint, -1):
                out.matched[s.endpoint] = matched
            out.weighted[s.endpoint] = max(score, out.weighted.get(s.endpoint, score))
            if s.data_parallel_rank >= 0:
                out.ranks.setdefault(s.endpoint, {})[int(s.data_parallel_rank)] = matched
        return out

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
