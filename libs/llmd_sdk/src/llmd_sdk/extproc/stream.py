"""The per-exchange processor base: hooks for the subclass, Envoy's choreography in the base.

One `ExtProcStream` lives for one gRPC stream, i.e. one HTTP exchange. Subclasses override the
`on_*` hooks and return `Reply` decisions; the base turns each decision into the messages that
the negotiated body mode requires:

- request decided at the headers (e.g. a GET without body): headers response, body passes.
- request decided after the body (BBR, EPP):
  BUFFERED: CONTINUE on the headers, the decision on the body response (Envoy applies header
  mutations there because it still holds the headers).
  FULL_DUPLEX_STREAMED: the headers response is held until the body is complete, then comes
  with the decision, followed by the (possibly rewritten) body as streamed responses.
  STREAMED: Envoy ignores header mutations in body responses unless configured with
  `send_body_without_waiting_for_header_response`; with it the headers response is held as in
  full duplex, without it the decision's headers cannot reach the request and are dropped with a
  warning.
- response: headers answered at once; body chunks observed and passed through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.contracts import ext_proc
from llmd_sdk.extproc.messages import (
    Headers,
    common_response,
    dynamic_metadata,
    error_response,
    headers_to_dict,
)
from llmd_sdk.extproc.modes import BodyMode
from llmd_sdk.extproc.reply import CONTINUE, Reply
from llmd_sdk.telemetry.logging import get_logger

_log = get_logger("llmd_sdk.extproc")

# Envoy recommends streamed body responses of at most 64 KiB.
STREAMED_CHUNK_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class StreamContext:
    """What a processor knows about its stream besides the messages."""

    started: float = field(default_factory=time.monotonic)
    # The grpc.aio ServicerContext (None when driven without gRPC, as in unit tests).
    grpc_context: Any = None
    # Merged `metadata_context` namespaces seen so far (e.g. "envoy.lb.subset_hint").
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        """The gRPC peer ("ipv4:127.0.0.1:port"); computed on demand, it is not free."""
        return str(self.grpc_context.peer()) if self.grpc_context is not None else ""


class ExtProcStream:
    """Base class of one ext_proc exchange. Override the hooks; call `run` from the servicer."""

    #: Body modes assumed when Envoy does not announce them in `protocol_config`.
    default_request_body_mode: BodyMode = BodyMode.BUFFERED
    default_response_body_mode: BodyMode = BodyMode.NONE
    default_send_body_without_waiting: bool = False
    max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Label for logs and error details.
    service_name: str = "ext_proc"

    def __init__(self, context: StreamContext | None = None) -> None:
        self.context = context or StreamContext()
        self.request_body_mode = self.default_request_body_mode
        self.response_body_mode = self.default_response_body_mode
        self.send_body_without_waiting = self.default_send_body_without_waiting
        self.request_headers: Headers = {}
        self.response_headers: Headers = {}
        self._mode_known = False
        self._request_decided = False
        self._request_headers_answered = False
        self._body_parts: list[bytes] = []
        self._body_size = 0
        self._body_chunks = 0
        self._response_parts: list[bytes] = []
        self.finished = False  # an immediate response ended the exchange
        self.response_complete = False

    # ----------------------------------------------------------------- hooks
    async def on_request_headers(self, headers: Headers, end_of_stream: bool) -> Reply | None:
        """Decide now (return a Reply) or wait for the body (return None, the default)."""
        return None

    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        """Decide with the whole request body (empty when the request has none)."""
        return CONTINUE

    async def on_response_headers(self, headers: Headers, end_of_stream: bool) -> Reply:
        return CONTINUE

    async def on_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        """Observe a response body chunk in STREAMED and FULL_DUPLEX_STREAMED modes."""

    async def on_response_body(self, body: bytes) -> Reply:
        """Decide with the whole response body in BUFFERED mode."""
        return CONTINUE

    async def on_close(self, complete: bool) -> None:
        """The stream ended; `complete` is False when it was cancelled or broke mid-way."""

    def on_error(self, exc: BaseException) -> None:
        """A hook raised: the client gets a 500 with an OpenAI error body; this logs it."""
        _log.error(
            "ext_proc hook failed",
            service=self.service_name,
            request_id=self.request_headers.get("x-request-id"),
            exc_info=exc,
        )

    # ------------------------------------------------------------ choreography
    async def run(
        self, requests: AsyncIterator[ext_proc.ProcessingRequest]
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        """Consume Envoy's messages and yield the answers, until the stream ends."""
        try:
            async for req in requests:
                if self.finished:
                    continue  # Envoy stops after an immediate response; ignore stragglers
                for resp in await self.dispatch(req):
                    yield resp
        finally:
            await self.on_close(self.response_complete or self.finished)

    async def dispatch(self, req: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        """The answers to one message (none while a decision waits for more body)."""
        if not self._mode_known:
            self._read_protocol_config(req)
        if req.HasField("metadata_context"):
            self._merge_metadata(req)
        kind = req.WhichOneof("request")
        try:
            if kind == "request_headers":
                return await self._on_request_headers(req.request_headers)
            if kind == "request_body":
                return await self._on_request_body(req.request_body)
            if kind == "response_headers":
                return [await self._on_response_headers(req.response_headers)]
            if kind == "response_body":
                resp = await self._on_response_body(req.response_body)
                return [] if resp is None else [resp]
            if kind == "request_trailers":
                return [ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())]
            if kind == "response_trailers":
                self.response_complete = True
                return [ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())]
            return []
        except Exception as exc:
            self.on_error(exc)
            self.finished = True
            return [
                error_response(
                    500,
                    f"{self.service_name}: internal error while processing {kind}",
                    details=f"{self.service_name}_internal_error",
                )
            ]

    def _read_protocol_config(self, req: ext_proc.ProcessingRequest) -> None:
        self._mode_known = True
        if req.HasField("protocol_config"):
            cfg = req.protocol_config
            self.request_body_mode = BodyMode(cfg.request_body_mode)
            self.response_body_mode = BodyMode(cfg.response_body_mode)
            self.send_body_without_waiting = cfg.send_body_without_waiting_for_header_response

    def _merge_metadata(self, req: ext_proc.ProcessingRequest) -> None:
        from google.protobuf import json_format

        for ns, struct in req.metadata_context.filter_metadata.items():
            self.context.metadata.setdefault(ns, {}).update(json_format.MessageToDict(struct))

    # request side -------------------------------------------------------------
    async def _on_request_headers(
        self, msg: ext_proc.HttpHeaders
    ) -> list[ext_proc.ProcessingResponse]:
        self.request_headers = headers_to_dict(msg.headers)
        eos = msg.end_of_stream
        reply = await self.on_request_headers(self.request_headers, eos)
        if reply is None and (eos or self.request_body_mode == BodyMode.NONE):
            reply = await self.on_request_body(self.request_headers, b"")
        if reply is not None:
            self._request_decided = True
            self._request_headers_answered = True
            return [self._headers_response(reply, request=True)]
        if self._holds_request_headers():
            return []  # answered together with the decision, once the body is complete
        self._request_headers_answered = True
        return [_HEADERS_CONTINUE]

    def _holds_request_headers(self) -> bool:
        mode = self.request_body_mode
        return mode == BodyMode.FULL_DUPLEX_STREAMED or (
            mode == BodyMode.STREAMED and self.send_body_without_waiting
        )

    async def _on_request_body(self, msg: ext_proc.HttpBody) -> list[ext_proc.ProcessingResponse]:
        chunk, eos = msg.body, msg.end_of_stream
        mode = self.request_body_mode
        if self._request_decided:  # decided at the headers: the body just passes
            if mode == BodyMode.FULL_DUPLEX_STREAMED:
                return [_streamed(chunk, eos, request=True)]
            return [_body_continue(request=True)]
        self._body_size += len(chunk)
        self._body_chunks += 1
        if self._body_size > self.max_request_body_bytes:
            self.finished = True
            return [
                error_response(
                    413,
                    f"request body exceeds {self.max_request_body_bytes} bytes",
                    details=f"{self.service_name}_body_too_large",
                )
            ]
        self._body_parts.append(chunk)
        if not eos:
            return []
        body = self._body_parts[0] if len(self._body_parts) == 1 else b"".join(self._body_parts)
        self._body_parts.clear()
        reply = await self.on_request_body(self.request_headers, body)
        self._request_decided = True
        return self._deliver_request_decision(reply, body)

    def _deliver_request_decision(
        self, reply: Reply, body: bytes
    ) -> list[ext_proc.ProcessingResponse]:
        if reply.immediate is not None:
            self.finished = True
            return [reply.immediate]
        mode = self.request_body_mode
        out: list[ext_proc.ProcessingResponse] = []
        if mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL):
            set_headers = dict(reply.set_headers)
            if reply.body is not None and "content-length" in self.request_headers:
                # Envoy rejects a mutated body whose length disagrees with content-length.
                set_headers["content-length"] = str(len(reply.body))
            resp = ext_proc.ProcessingResponse(
                request_body=ext_proc.BodyResponse(
                    response=common_response(
                        set_headers=set_headers,
                        remove_headers=reply.remove_headers,
                        body=reply.body,
                        clear_route_cache=reply.clear_route_cache,
                    )
                )
            )
            _attach_metadata(resp, reply.dynamic_metadata)
            return [resp]
        if not self._request_headers_answered:
            out.append(self._headers_response(reply, request=True))
            self._request_headers_answered = True
        elif reply.mutates_headers:
            self.on_dropped_header_mutation(reply)
        if mode == BodyMode.FULL_DUPLEX_STREAMED:
            out.extend(_streamed_body(reply.body if reply.body is not None else body, True))
            return out
        # STREAMED: one answer per chunk received, in order.
        for i in range(self._body_chunks):
            if reply.body is None:
                out.append(_body_continue(request=True))
            else:
                replacement = reply.body if i == 0 else b""
                cr = ext_proc.CommonResponse()
                if replacement:
                    cr.body_mutation.body = replacement
                else:
                    cr.body_mutation.clear_body = True
                out.append(
                    ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse(response=cr))
                )
        return out

    def on_dropped_header_mutation(self, reply: Reply) -> None:
        """Headers decided from the body could not reach the request (STREAMED without
        `send_body_without_waiting_for_header_response`). Override to log or count."""

    def _headers_response(self, reply: Reply, *, request: bool) -> ext_proc.ProcessingResponse:
        if reply.immediate is not None:
            self.finished = True
            return reply.immediate
        hr = ext_proc.HeadersResponse(
            response=common_response(
                set_headers=reply.set_headers,
                remove_headers=reply.remove_headers,
                clear_route_cache=reply.clear_route_cache,
            )
        )
        resp = (
            ext_proc.ProcessingResponse(request_headers=hr)
            if request
            else ext_proc.ProcessingResponse(response_headers=hr)
        )
        _attach_metadata(resp, reply.dynamic_metadata)
        return resp

    # response side ------------------------------------------------------------
    async def _on_response_headers(self, msg: ext_proc.HttpHeaders) -> ext_proc.ProcessingResponse:
        self.response_headers = headers_to_dict(msg.headers)
        if msg.end_of_stream:
            self.response_complete = True
        reply = await self.on_response_headers(self.response_headers, msg.end_of_stream)
        return self._headers_response(reply, request=False)

    async def _on_response_body(self, msg: ext_proc.HttpBody) -> ext_proc.ProcessingResponse | None:
        chunk, eos = msg.body, msg.end_of_stream
        if eos:
            self.response_complete = True
        mode = self.response_body_mode
        if mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL):
            self._response_parts.append(chunk)
            if not eos:
                return None
            body = b"".join(self._response_parts)
            self._response_parts.clear()
            reply = await self.on_response_body(body)
            if reply.immediate is not None:
                self.finished = True
                return reply.immediate
            resp = ext_proc.ProcessingResponse(
                response_body=ext_proc.BodyResponse(
                    response=common_response(
                        set_headers=reply.set_headers,
                        remove_headers=reply.remove_headers,
                        body=reply.body,
                    )
                )
            )
            _attach_metadata(resp, reply.dynamic_metadata)
            return resp
        await self.on_response_chunk(chunk, eos)
        if mode == BodyMode.FULL_DUPLEX_STREAMED:
            return _streamed(chunk, eos, request=False)
        return _body_continue(request=False)


def _attach_metadata(
    resp: ext_proc.ProcessingResponse, namespaces: Mapping[str, Mapping[str, Any]]
) -> None:
    if namespaces:
        resp.dynamic_metadata.CopyFrom(dynamic_metadata(namespaces))


# Immutable in practice: the server only serialises them.
_HEADERS_CONTINUE = ext_proc.ProcessingResponse(
    request_headers=ext_proc.HeadersResponse(response=ext_proc.CommonResponse())
)
_REQUEST_BODY_CONTINUE = ext_proc.ProcessingResponse(
    request_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
)
_RESPONSE_BODY_CONTINUE = ext_proc.ProcessingResponse(
    response_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
)


def _body_continue(*, request: bool) -> ext_proc.ProcessingResponse:
    return _REQUEST_BODY_CONTINUE if request else _RESPONSE_BODY_CONTINUE


def _streamed(chunk: bytes, eos: bool, *, request: bool) -> ext_proc.ProcessingResponse:
    cr = ext_proc.CommonResponse()
    cr.body_mutation.streamed_response.body = chunk
    cr.body_mutation.streamed_response.end_of_stream = eos
    br = ext_proc.BodyResponse(response=cr)
    if request:
        return ext_proc.ProcessingResponse(request_body=br)
    return ext_proc.ProcessingResponse(response_body=br)


def _streamed_body(body: bytes, request: bool) -> list[ext_proc.ProcessingResponse]:
    if not body:
        return [_streamed(b"", True, request=request)]
    n = len(body)
    return [
        _streamed(
            body[i : i + STREAMED_CHUNK_BYTES], i + STREAMED_CHUNK_BYTES >= n, request=request
        )
        for i in range(0, n, STREAMED_CHUNK_BYTES)
    ]
