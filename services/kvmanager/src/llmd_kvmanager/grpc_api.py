"""The SDK's ``llmd.kvindex.v1.KVIndex`` gRPC contract, served from a `KVManager`."""

from __future__ import annotations

import time
from typing import Any

import grpc
from llmd_sdk.contracts import kvindex, kvindex_grpc
from llmd_sdk.kvcache.indexer import ScoreResult, UnknownModelError
from llmd_sdk.telemetry import get_logger

from llmd_kvmanager.manager import KVManager

log = get_logger("llmd_kvmanager.grpc")


class KVIndexService(kvindex_grpc.KVIndexServicer):
    """``Score`` and ``Stats`` (grpc.aio)."""

    def __init__(self, manager: KVManager) -> None:
        self.m = manager

    async def _refuse(self, context: Any, code: grpc.StatusCode, msg: str) -> None:
        self.m.metrics.score_errors.labels(code.name).inc()
        await context.abort(code, msg)

    async def Score(self, request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        idx = self.m.indexer
        which = request.WhichOneof("input")
        model = request.model
        if not model:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "model: required")
        candidates = list(request.candidate_endpoints) or None
        lora = request.lora_name or None
        salt = request.cache_salt or None
        if which not in ("token_ids", "prompt", "chat"):
            await self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "input: give one of token_ids, prompt or chat",
            )
        result: ScoreResult | None = None
        refusal: tuple[grpc.StatusCode, str] | None = None
        try:
            if which == "token_ids":
                result = await idx.score_tokens(
                    model, request.token_ids.ids, candidates, lora, salt
                )
            elif which == "prompt":
                result = await idx.score_prompt(model, request.prompt, candidates, lora, salt)
            else:
                messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
                result = await idx.score_chat(model, messages, candidates, lora, salt)
        except UnknownModelError as exc:
            refusal = (grpc.StatusCode.NOT_FOUND, str(exc))
        except LookupError as exc:  # no tokenizer for this model
            refusal = (grpc.StatusCode.FAILED_PRECONDITION, f"model {model}: {exc}")
        except ValueError as exc:  # a chat template that fails, an unknown LoRA, ...
            refusal = (grpc.StatusCode.INVALID_ARGUMENT, _first_line(exc))
        except Exception as exc:  # the index backend (Redis) failing
            log.warning("score failed", model=model, error=_first_line(exc))
            refusal = (grpc.StatusCode.UNAVAILABLE, f"index backend: {_first_line(exc)}")
        if refusal is not None or result is None:
            code, msg = refusal or (grpc.StatusCode.INTERNAL, "no result")
            await self._refuse(context, code, msg)
            raise AssertionError("unreachable: abort raises")
        self.m.metrics.score_latency.labels(which).observe(time.perf_counter() - t0)
        return kvindex.ScoreResponse(
            scores=[
                kvindex.EndpointScore(
                    endpoint=s.endpoint,
                    matched_blocks=s.matched_blocks,
                    score=s.score,
                    blocks_by_medium=s.blocks_by_medium,
                    data_parallel_rank=s.data_parallel_rank,
                )
                for s in result.scores
            ],
            total_blocks=result.total_blocks,
            prompt_tokens=result.prompt_tokens,
            block_size=result.block_size,
        )

    async def Stats(self, request: Any, context: Any) -> Any:
        stats = await self.m.index.stats()
        sub = self.m.subscriber
        engines = await self.m.engine_stats(request.model or None)
        return kvindex.StatsResponse(
            keys=stats.keys,
            entries=stats.entries,
            events_total=sum(e.events for e in engines) if request.model else _events(self.m),
            malformed_total=sum(sub.counters.malformed.values()),
            engines=[
                kvindex.EngineStats(
                    endpoint=e.endpoint,
                    model=e.model,
                    blocks=e.blocks,
                    last_sequence=e.last_sequence,
                    events=e.events,
                    resyncs=e.resyncs,
                )
                for e in engines
            ],
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _events(m: KVManager) -> int:
    return sum(
        sum(v for k, v in st.events.items() if k != "skipped_group")
        for st in m.subscriber.applier.publishers.values()
    )


def add_to_server(server: grpc.aio.Server, manager: KVManager) -> KVIndexService:
    svc = KVIndexService(manager)
    kvindex_grpc.add_KVIndexServicer_to_server(svc, server)  # type: ignore[no-untyped-call]
    return svc
