"""A small real KVIndex gRPC server for tests: answers `Score` from prefix knowledge the test
plants (standing in for what kvmanager learns from engine KV events)."""

from __future__ import annotations

from typing import Any

import grpc
from llmd_sdk.contracts import kvindex, kvindex_grpc

BLOCK_CHARS = 64


class PlantedIndex(kvindex_grpc.KVIndexServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.known: dict[str, dict[str, int]] = {}  # prompt prefix -> endpoint -> blocks
        self.calls = 0
        self.peers: set[str] = set()

    def plant(self, prefix: str, endpoint: str, blocks: int) -> None:
        self.known.setdefault(prefix, {})[endpoint] = blocks

    async def Score(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        self.peers.add(context.peer())
        which = request.WhichOneof("input")
        if which == "prompt":
            text = request.prompt
        elif which == "chat":
            text = "".join(m.content for m in request.chat.messages)
        else:
            text = ""
        held: dict[str, int] = {}
        for prefix, eps in self.known.items():
            if text.startswith(prefix):
                for ep, blocks in eps.items():
                    held[ep] = max(held.get(ep, 0), blocks)
        candidates = list(request.candidate_endpoints) or list(held)
        total = max(1, len(text) // BLOCK_CHARS)
        return kvindex.ScoreResponse(
            scores=[
                kvindex.EndpointScore(
                    endpoint=ep,
                    matched_blocks=held.get(ep, 0),
                    score=float(held.get(ep, 0)),
                    data_parallel_rank=-1,
                )
                for ep in candidates
            ],
            total_blocks=total,
            prompt_tokens=len(text) // 4,
            block_size=16,
        )

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return kvindex.StatsResponse(keys=len(self.known))


async def start_index(port: int = 0) -> tuple[grpc.aio.Server, PlantedIndex, int]:
    server = grpc.aio.server()
    index = PlantedIndex()
    kvindex_grpc.add_KVIndexServicer_to_server(index, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, index, bound
