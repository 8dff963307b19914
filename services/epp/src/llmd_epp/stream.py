"""The ext_proc side: one `EPPStream` per Envoy stream (one HTTP exchange), delegating the
decision to the `Director` and watching the response for the served endpoint and `usage`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmd_sdk.extproc import CONTINUE, BodyMode, ExtProcStream, Headers, Reply, StreamContext
from llmd_sdk.telemetry import get_logger

from llmd_epp.director import Director, RequestContext

log = get_logger("llmd_epp.stream")
_warned_streamed = False


class EPPStream(ExtProcStream):
    service_name = "epp"
    # Upstream deploys the EPP with FULL_DUPLEX_STREAMED bodies both ways; Envoy announces the
    # real modes in protocol_config, these are only the fallback.
    default_request_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    default_response_body_mode = BodyMode.FULL_DUPLEX_STREAMED

    def __init__(self, director: Director, context: StreamContext | None = None) -> None:
        super().__init__(context)
        self.director = director
        self.ctx: RequestContext | None = None

    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        reply, self.ctx = await self.director.handle_request(headers, body, self.context.metadata)
        return reply

    async def on_response_headers(self, headers: Headers, end_of_stream: bool) -> Reply:
        if self.ctx is None:
            return CONTINUE
        extra = self.director.response_headers(self.ctx, headers, self.context.metadata)
        return Reply(set_headers=extra) if extra else CONTINUE

    async def on_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        if self.ctx is not None:
            self.director.response_chunk(self.ctx, chunk)

    async def on_response_body(self, body: bytes) -> Reply:
        if self.ctx is not None:
            self.director.response_chunk(self.ctx, body)
        return CONTINUE

    async def on_close(self, complete: bool) -> None:
        if self.ctx is not None:
            # Without response body processing the response headers are all Envoy sends us.
            headers_only = self.response_body_mode == BodyMode.NONE and self.ctx.status > 0
            self.director.finish(self.ctx, complete or headers_only)

    def on_dropped_header_mutation(self, reply: Reply) -> None:
        global _warned_streamed
        if not _warned_streamed:
            _warned_streamed = True
            log.warning(
                "Envoy sends STREAMED request bodies without "
                "send_body_without_waiting_for_header_response: the destination header cannot "
                "reach the request; use FULL_DUPLEX_STREAMED (or BUFFERED)"
            )

    def on_error(self, exc: BaseException) -> None:
        self.director._outcome("error")
        log.error("ext_proc hook failed", error=repr(exc), exc_info=exc)


def stream_factory(director: Director) -> Callable[[StreamContext], EPPStream]:
    def make(ctx: StreamContext) -> EPPStream:
        return EPPStream(director, ctx)

    return make


__all__: list[Any] = ["EPPStream", "stream_factory"]
