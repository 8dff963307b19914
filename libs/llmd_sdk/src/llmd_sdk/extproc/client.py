"""An Envoy-semantics ext_proc client: drives one HTTP exchange through a chain of processors.

It is the test harness's Envoy (and the dev gateway's), not a production proxy. It reproduces
what Envoy's ext_proc filter does with each processing mode, so processors tested against it
behave the same behind Envoy:

- Request path: filters in order; response path: filters in reverse order (encoder chain).
- Headers are sent first; with BUFFERED bodies Envoy holds them until the body response, so
  header mutations in that body response apply. With STREAMED bodies the headers continue after
  the headers response and header mutations in body responses are ignored (unless
  `send_body_without_waiting_for_header_response`, where the first body response may carry them).
  With FULL_DUPLEX_STREAMED the body is sent without waiting and the processor streams it back.
- `clear_route_cache` takes effect only on a response that also mutates headers.
- An ImmediateResponse ends the exchange with a local reply. A processor that times out yields
  504, one that fails yields 500, unless the filter has `failure_mode_allow`.
- A BUFFERED body over the buffer limit is a local 413, as Envoy's buffer limit gives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from llmd_sdk.contracts import ext_proc, ext_proc_grpc
from llmd_sdk.extproc.messages import (
    Headers,
    apply_header_mutation,
    dict_to_header_map,
    headers_to_dict,
    metadata_context,
    openai_error_json,
)
from llmd_sdk.extproc.modes import BodyMode, HeaderMode

Metadata = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """One ext_proc filter of the chain, with Envoy's knobs."""

    name: str
    target: str  # "host:port" of the processor's gRPC server
    request_header_mode: HeaderMode = HeaderMode.SEND
    response_header_mode: HeaderMode = HeaderMode.SEND
    request_body_mode: BodyMode = BodyMode.BUFFERED
    response_body_mode: BodyMode = BodyMode.NONE
    send_body_without_waiting_for_header_response: bool = False
    failure_mode_allow: bool = False
    # Envoy's default is 200 ms; processors that wait for scheduling need more. Like Envoy, the
    # client starts no timer while a FULL_DUPLEX_STREAMED response body streams.
    message_timeout: float = 5.0
    max_buffered_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class LocalReply:
    """A response the chain produced itself (ImmediateResponse, or an ext_proc failure)."""

    status: int
    headers: Headers = field(default_factory=dict)
    body: bytes = b""
    details: str = ""
    filter_name: str = ""


@dataclass(slots=True)
class RequestOutcome:
    headers: Headers
    body: bytes
    dynamic_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    route_cache_cleared: bool = False
    local_reply: LocalReply | None = None


@dataclass(slots=True)
class ResponseHeadersOutcome:
    headers: Headers
    local_reply: LocalReply | None = None


class _FilterFailed(Exception):
    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.details)
        self.reply = reply


class _Skip(Exception):
    """failure_mode_allow: behave as if the filter were not there."""


class _FilterStream:
    """One filter's gRPC stream for one exchange."""

    def __init__(self, cfg: FilterConfig, stub: ext_proc_grpc.ExternalProcessorStub) -> None:
        self.cfg = cfg
        self._stub = stub
        self._call: Any = None
        self.skipped = False
        self._first = True

    def _ensure_call(self) -> Any:
        if self._call is None:
            self._call = self._stub.Process()
        return self._call

    def _stamp(self, req: ext_proc.ProcessingRequest) -> ext_proc.ProcessingRequest:
        if self._first:
            self._first = False
            cfg = self.cfg
            req.protocol_config.request_body_mode = int(cfg.request_body_mode)  # type: ignore[assignment,unused-ignore]
            req.protocol_config.response_body_mode = int(cfg.response_body_mode)  # type: ignore[assignment,unused-ignore]
            req.protocol_config.send_body_without_waiting_for_header_response = (
                cfg.send_body_without_waiting_for_header_response
            )
        return req

    async def send(self, req: ext_proc.ProcessingRequest) -> None:
        call = self._ensure_call()
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the await in a new Task, which costs a
            # task and an extra loop iteration per message, several times per request.
            async with asyncio.timeout(self.cfg.message_timeout):
                await call.write(self._stamp(req))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, ConnectionError) as exc:
            self._fail(500, f"ext_proc {self.cfg.name} stream write failed: {exc}")
        except TimeoutError:
            self._fail(504, f"ext_proc {self.cfg.name} did not accept a message in time")

    async def recv(self, *, timed: bool = True) -> ext_proc.ProcessingResponse:
        """The processor's next message; `timed=False` waits without `message_timeout`."""
        call = self._ensure_call()
        try:
            async with asyncio.timeout(self.cfg.message_timeout if timed else None):
                resp = await call.read()
        except TimeoutError:
            self._fail(504, f"ext_proc {self.cfg.name} timed out")
        except grpc.aio.AioRpcError as exc:
            self._fail(500, f"ext_proc {self.cfg.name} failed: {exc.code().name} {exc.details()}")
        if resp is grpc.aio.EOF:
            # A processor that closes the stream cleanly lets Envoy carry on without it.
            raise _Skip()
        assert isinstance(resp, ext_proc.ProcessingResponse)
        return resp

    def _fail(self, status: int, details: str) -> Any:
        if self.cfg.failure_mode_allow:
            self.skipped = True
            raise _Skip()
        raise _FilterFailed(
            LocalReply(
                status=status,
                headers={"content-type": "application/json"},
                body=openai_error_json(status, details),
                details=details,
                filter_name=self.cfg.name,
            )
        )

    async def close(self, cancel: bool = False) -> None:
        if self._call is None:
            return
        if cancel:
            self._call.cancel()
            return
        if self._call.done():
            # Already over: a timed-out read cancels the whole RPC, and reading a cancelled
            # call raises CancelledError, which must not escape as if our task were cancelled.
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        # Drain so the server's stream ends cleanly (its close hook sees a complete exchange).
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            while True:
                async with asyncio.timeout(self.cfg.message_timeout):
                    if await self._call.read() is grpc.aio.EOF:
                        break


def _local_reply(resp: ext_proc.ProcessingResponse, filter_name: str) -> LocalReply:
    imm = resp.immediate_response
    headers: Headers = {}
    apply_header_mutation(headers, imm.headers)
    return LocalReply(
        status=int(imm.status.code) or 200,
        headers=headers,
        body=bytes(imm.body),
        details=imm.details,
        filter_name=filter_name,
    )


def _merge_metadata(into: dict[str, dict[str, Any]], resp: ext_proc.ProcessingResponse) -> None:
    if resp.HasField("dynamic_metadata"):
        for ns, value in json_format.MessageToDict(resp.dynamic_metadata).items():
            if isinstance(value, dict):
                into.setdefault(ns, {}).update(value)


class Exchange:
    """One HTTP exchange through the chain. Use as an async context manager."""

    def __init__(self, streams: list[_FilterStream]) -> None:
        self._streams = streams
        self._done = False

    async def __aenter__(self) -> Exchange:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(cancel=exc_type is not None)

    async def close(self, cancel: bool = False) -> None:
        if self._done:
            return
        self._done = True
        await asyncio.gather(*(s.close(cancel=cancel) for s in self._streams))

    # ------------------------------------------------------------------ request
    async def process_request(
        self,
        headers: Mapping[str, str],
        body_chunks: Sequence[bytes] = (),
        metadata: Metadata | None = None,
    ) -> RequestOutcome:
        """Run the request through every filter in order."""
        outcome = RequestOutcome(headers={k.lower(): v for k, v in headers.items()}, body=b"")
        chunks = [c for c in body_chunks if c] or ([] if not body_chunks else [b""])
        has_body = any(chunks)
        if not has_body:
            chunks = []
        for stream in self._streams:
            try:
                chunks = await self._request_through(stream, outcome, chunks, metadata)
            except _Skip:
                continue
            except _FilterFailed as failed:
                outcome.local_reply = failed.reply
                return outcome
            if outcome.local_reply is not None:
                return outcome
        outcome.body = b"".join(chunks)
        return outcome

    async def _request_through(
        self,
        stream: _FilterStream,
        outcome: RequestOutcome,
        chunks: list[bytes],
        metadata: Metadata | None,
    ) -> list[bytes]:
        cfg = stream.cfg
        has_body = bool(chunks)
        mode = cfg.request_body_mode if has_body else BodyMode.NONE
        headers = outcome.headers
        sent_headers = cfg.request_header_mode != HeaderMode.SKIP
        if mode == BodyMode.BUFFERED and sum(map(len, chunks)) > cfg.max_buffered_bytes:
            raise _FilterFailed(
                LocalReply(
                    413,
                    {"content-type": "application/json"},
                    openai_error_json(413, "request body too large"),
                    "request_payload_too_large",
                    cfg.name,
                )
            )
        if sent_headers:
            req = ext_proc.ProcessingRequest(
                request_headers=ext_proc.HttpHeaders(
                    headers=dict_to_header_map(headers), end_of_stream=not has_body
                )
            )
            if metadata:
                req.metadata_context.CopyFrom(metadata_context(metadata))
            await stream.send(req)
        without_waiting = mode == BodyMode.FULL_DUPLEX_STREAMED or (
            mode == BodyMode.STREAMED and cfg.send_body_without_waiting_for_header_response
        )
        headers_held = True  # Envoy holds the headers until it knows what to do with them
        if sent_headers and not without_waiting:
            if not self._apply_headers_response(await stream.recv(), stream, outcome, request=True):
                return chunks
            headers_held = mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL)
        if mode == BodyMode.NONE:
            return chunks
        if mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL):
            body = b"".join(chunks)
            await stream.send(
                ext_proc.ProcessingRequest(
                    request_body=ext_proc.HttpBody(body=body, end_of_stream=True)
                )
            )
            resp = await stream.recv()
            if resp.HasField("immediate_response"):
                outcome.local_reply = _local_reply(resp, cfg.name)
                return chunks
            if resp.WhichOneof("response") != "request_body":
                stream._fail(500, f"ext_proc {cfg.name}: expected a request_body response")
            common = resp.request_body.response
            if common.HasField("header_mutation") and headers_held:
                apply_header_mutation(headers, common.header_mutation)
                outcome.route_cache_cleared |= common.clear_route_cache
            _merge_metadata(outcome.dynamic_metadata, resp)
            if common.HasField("body_mutation"):
                bm = common.body_mutation
                body = b"" if bm.clear_body else bytes(bm.body)
                cl = headers.get("content-length")
                if cl is not None and cl.isdigit() and int(cl) != len(body):
                    stream._fail(
                        500, "mismatch between content length and the length of the mutated body"
                    )
            return [body] if body else []
        # STREAMED or FULL_DUPLEX_STREAMED: send every chunk as it "arrives".
        for i, chunk in enumerate(chunks):
            await stream.send(
                ext_proc.ProcessingRequest(
                    request_body=ext_proc.HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1)
                )
            )
        if without_waiting and sent_headers:
            if not self._apply_headers_response(await stream.recv(), stream, outcome, request=True):
                return chunks
            headers_held = mode == BodyMode.STREAMED  # first body response may still mutate
        if mode == BodyMode.FULL_DUPLEX_STREAMED:
            out: list[bytes] = []
            while True:
                resp = await stream.recv()
                if resp.HasField("immediate_response"):
                    outcome.local_reply = _local_reply(resp, cfg.name)
                    return chunks
                common = resp.request_body.response
                _merge_metadata(outcome.dynamic_metadata, resp)
                sr = common.body_mutation.streamed_response
                if sr.body:
                    out.append(bytes(sr.body))
                if sr.end_of_stream:
                    return out
        out = []
        for _ in chunks:
            resp = await stream.recv()
            if resp.HasField("immediate_response"):
                outcome.local_reply = _local_reply(resp, cfg.name)
                return chunks
            common = resp.request_body.response
            if common.HasField("header_mutation") and headers_held:
                apply_header_mutation(headers, common.header_mutation)
                outcome.route_cache_cleared |= common.clear_route_cache
            headers_held = False
            _merge_metadata(outcome.dynamic_metadata, resp)
            chunk = chunks[len(out)]
            if common.HasField("body_mutation"):
                bm = common.body_mutation
                chunk = b"" if bm.clear_body else bytes(bm.body)
            out.append(chunk)
        return [c for c in out if c]

    def _apply_headers_response(
        self,
        resp: ext_proc.ProcessingResponse,
        stream: _FilterStream,
        outcome: RequestOutcome | None,
        *,
        request: bool,
        response_headers: Headers | None = None,
    ) -> bool:
        """Apply a headers response; False when it was a local reply."""
        if resp.HasField("immediate_response"):
            reply = _local_reply(resp, stream.cfg.name)
            if outcome is not None:
                outcome.local_reply = reply
            raise _FilterFailed(reply) if outcome is None else _Stop(reply)
        expected = "request_headers" if request else "response_headers"
        if resp.WhichOneof("response") != expected:
            stream._fail(500, f"ext_proc {stream.cfg.name}: expected a {expected} response")
        common = getattr(resp, expected).response
        target = outcome.headers if outcome is not None else response_headers
        assert target is not None
        if common.HasField("header_mutation"):
            apply_header_mutation(target, common.header_mutation)
            if outcome is not None:
                outcome.route_cache_cleared |= common.clear_route_cache
        if outcome is not None:
            _merge_metadata(outcome.dynamic_metadata, resp)
        return True

    # ----------------------------------------------------------------- response
    async def process_response_headers(
        self,
        status: int,
        headers: Mapping[str, str],
        end_of_stream: bool,
        metadata: Metadata | None = None,
    ) -> ResponseHeadersOutcome:
        """Run the upstream response headers through the filters in reverse order."""
        out: Headers = {":status": str(status), **{k.lower(): v for k, v in headers.items()}}
        for stream in reversed(self._streams):
            if stream.skipped or stream.cfg.response_header_mode == HeaderMode.SKIP:
                continue
            req = ext_proc.ProcessingRequest(
                response_headers=ext_proc.HttpHeaders(
                    headers=dict_to_header_map(out), end_of_stream=end_of_stream
                )
            )
            if metadata:
                req.metadata_context.CopyFrom(metadata_context(metadata))
            try:
                await stream.send(req)
                resp = await stream.recv()
                self._apply_headers_response(
                    resp, stream, None, request=False, response_headers=out
                )
            except _Skip:
                continue
            except _FilterFailed as failed:
                return ResponseHeadersOutcome(headers=out, local_reply=failed.reply)
        return ResponseHeadersOutcome(headers=out)

    async def process_response_body(
        self, chunks: AsyncIterator[bytes], content_length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream the upstream body through the filters in reverse order.

        Each chunk goes to the processors as it arrives. Like Envoy's codec, the last chunk
        carries end_of_stream when `content_length` says it is the last; otherwise (a chunked
        body) an empty chunk with end_of_stream follows the upstream's end.
        """
        pairs: AsyncIterator[tuple[bytes, bool]] = _with_eos(chunks, content_length)
        for stream in reversed(self._streams):
            if stream.skipped or stream.cfg.response_body_mode == BodyMode.NONE:
                continue
            pairs = _response_body_through(stream, pairs)
        async for chunk, _ in pairs:
            if chunk:
                yield chunk


class _Stop(_FilterFailed):
    """A headers response carried an ImmediateResponse."""


async def _with_eos(
    chunks: AsyncIterator[bytes], content_length: int | None
) -> AsyncIterator[tuple[bytes, bool]]:
    """Pair each upstream chunk with end_of_stream, without holding any chunk back."""
    if content_length == 0:
        yield b"", True
        return
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        last = content_length is not None and seen >= content_length
        yield chunk, last
        if last:
            return
    yield b"", True


async def _response_body_through(
    stream: _FilterStream, pairs: AsyncIterator[tuple[bytes, bool]]
) -> AsyncIterator[tuple[bytes, bool]]:
    """One filter's view of the response body: (chunk, end_of_stream) in, the same out."""
    mode = stream.cfg.response_body_mode
    try:
        if mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL):
            body = b"".join([c async for c, _ in pairs])
            try:
                await stream.send(
                    ext_proc.ProcessingRequest(
                        response_body=ext_proc.HttpBody(body=body, end_of_stream=True)
                    )
                )
                resp = await stream.recv()
            except _Skip:
                yield body, True  # Envoy still holds the body it buffered
                return
            common = resp.response_body.response
            if common.HasField("body_mutation"):
                bm = common.body_mutation
                body = b"" if bm.clear_body else bytes(bm.body)
            yield body, True
            return
        if mode == BodyMode.STREAMED:
            async for chunk, eos in pairs:
                await stream.send(
                    ext_proc.ProcessingRequest(
                        response_body=ext_proc.HttpBody(body=chunk, end_of_stream=eos)
                    )
                )
                try:
                    common = (await stream.recv()).response_body.response
                except _Skip:
                    yield chunk, eos  # Envoy still holds the chunk it sent
                    raise
                if common.HasField("body_mutation"):
                    bm = common.body_mutation
                    chunk = b"" if bm.clear_body else bytes(bm.body)
                yield chunk, eos
            return

        # FULL_DUPLEX_STREAMED: write as chunks come, read what the processor streams back.
        broke: list[BaseException] = []

        async def writer() -> None:
            try:
                async for chunk, eos in pairs:
                    await stream.send(
                        ext_proc.ProcessingRequest(
                            response_body=ext_proc.HttpBody(body=chunk, end_of_stream=eos)
                        )
                    )
            except Exception as exc:
                # The upstream (or the processor) broke mid-body. Nothing else would end the
                # reader's wait for the processor's next message: cancel the stream under it.
                broke.append(exc)
                await stream.close(cancel=True)
                raise

        task = asyncio.create_task(writer())
        try:
            while True:
                # Envoy starts no message timer in this mode: the processor's next message may
                # wait on the upstream's next chunk for as long as the upstream takes.
                try:
                    resp = await stream.recv(timed=False)
                except (asyncio.CancelledError, _FilterFailed):
                    current = asyncio.current_task()
                    if broke and not (current is not None and current.cancelling()):
                        raise broke[0] from None
                    raise
                sr = resp.response_body.response.body_mutation.streamed_response
                yield bytes(sr.body), sr.end_of_stream
                if sr.end_of_stream:
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # also collects a failed writer's exception, raised above
    except _Skip:
        # The processor closed its stream: Envoy carries on without it.
        async for pair in pairs:
            yield pair


class EnvoyClient:
    """A chain of ext_proc filters, each reached over its own gRPC channel."""

    def __init__(self, filters: Sequence[FilterConfig]) -> None:
        self.filters = list(filters)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, ext_proc_grpc.ExternalProcessorStub] = {}
        for cfg in self.filters:
            if cfg.target not in self._channels:
                channel = grpc.aio.insecure_channel(
                    cfg.target,
                    options=[
                        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                        ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ],
                )
                self._channels[cfg.target] = channel
                self._stubs[cfg.target] = ext_proc_grpc.ExternalProcessorStub(channel)

    def exchange(self) -> Exchange:
        return Exchange([_FilterStream(cfg, self._stubs[cfg.target]) for cfg in self.filters])

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))

    async def __aenter__(self) -> EnvoyClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


__all__ = [
    "EnvoyClient",
    "Exchange",
    "FilterConfig",
    "LocalReply",
    "RequestOutcome",
    "ResponseHeadersOutcome",
    "headers_to_dict",
]
