"""BBR's ext_proc exchange: one `BBRStream` per request, on the SDK's `ExtProcStream`.

Request headers are remembered (path, content-type, request id) and answered according to the
body mode; the body is read once, at end of stream, and the decision (`llmd_bbr.router`) comes
back as header mutations with `clear_route_cache` so Envoy re-picks the route.

FULL_DUPLEX_STREAMED (and STREAMED with `send_body_without_waiting_for_header_response`) get an
early path: an incremental scan (`llmd_bbr.model_scan`) finds the top-level `model` while the
body is still arriving; the headers response goes out at once, the chunks held so far follow as
body responses, and every later chunk is answered as it arrives. The whole body is still parsed
at end of stream: a body that turns out not to be JSON, or that repeats `model` with another
value, ends with a 400 instead of its last chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.contracts import ext_proc
from llmd_sdk.extproc import BodyMode, ExtProcStream, Headers, Reply, StreamContext
from llmd_sdk.extproc.messages import common_response, error_response, immediate_response
from llmd_sdk.openai import error_json

from llmd_bbr.body import BodyRejected, encode_model, splice_model
from llmd_bbr.metrics import BBRMetrics
from llmd_bbr.model_scan import ModelScanner
from llmd_bbr.router import BodyRouter, Decision

REQUEST_ID = "x-request-id"
STREAM_CHUNK = 64 * 1024  # Envoy's recommended ceiling for one streamed body response
_MODEL_KEY = b'"model"'

# Content types that are never a JSON body (multipart forms, e.g. audio transcriptions).
_NOT_JSON_PREFIXES = ("multipart/", "application/octet-stream", "application/x-www-form-urlencoded")


@dataclass
class BBRService:
    """What every stream shares: the router (and its swappable table), metrics, logs, tracing."""

    router: BodyRouter
    metrics: BBRMetrics
    log: Any
    max_body_bytes: int = 8 * 1024 * 1024
    # Streamed modes: how far into the body to look for `model` before waiting for the end
    # (0 turns early routing off).
    early_scan_bytes: int = 4096
    assume_body_mode: BodyMode = BodyMode.BUFFERED
    tracer: Any = None  # an OpenTelemetry tracer when tracing is on
    responses: ResponseCache = field(default_factory=lambda: ResponseCache())
    # One warning per process for a misconfiguration that affects every request.
    _warned: set[str] = field(default_factory=set)

    def warn_once(self, key: str, message: str, **fields: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message, **fields)

    def stream(self, context: StreamContext) -> BBRStream:
        return BBRStream(self, context)


_HEADERS_CONTINUE = ext_proc.ProcessingResponse(
    request_headers=ext_proc.HeadersResponse(response=ext_proc.CommonResponse())
)
_BODY_CONTINUE = ext_proc.ProcessingResponse(
    request_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
)
_TRAILERS_CONTINUE = ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())


def _internal_error() -> ext_proc.ProcessingResponse:
    return error_response(500, "bbr: internal error", details="bbr_internal_error")


class BBRStream(ExtProcStream):
    service_name = "bbr"

    def __init__(self, service: BBRService, context: StreamContext | None = None) -> None:
        self.default_request_body_mode = service.assume_body_mode
        super().__init__(context)
        self.svc = service
        self.max_request_body_bytes = service.max_body_bytes
        self.request_id = ""
        self.path = ""
        self.outcome: str | None = None
        self._span: Any = None
        self._headers_decided = False
        # Early path state (streamed modes only).
        self._parts: list[bytes] = []
        self._size = 0
        self._chunks = 0
        self._scanner: ModelScanner | None = None
        self._scan_done = False  # early routing ruled out for this body
        self._tail = b""  # the last bytes of the previous chunk, for a key split in two
        self._early: Decision | None = None

    # ---------------------------------------------------------------- hooks
    async def on_request_headers(self, headers: Headers, end_of_stream: bool) -> Reply | None:
        self.request_id = headers.get(REQUEST_ID, "")
        self.path = headers.get(":path", "")
        if self.svc.tracer is not None:
            self._start_span(headers)
        if end_of_stream:
            return self._pass("passthrough")
        ctype = headers.get("content-type", "").lower()
        if ctype.startswith(_NOT_JSON_PREFIXES):
            return self._pass("skipped")
        if self.request_body_mode == BodyMode.NONE:
            self.svc.warn_once(
                "body_mode_none",
                "Envoy sends no request body to BBR (request_body_mode NONE): nothing to route on",
            )
            return self._pass("passthrough")
        return None

    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        """The whole body, for the modes the base handles (BUFFERED_PARTIAL): decide once."""
        result = self._decide(body)
        if isinstance(result, Reply):
            return result
        self._finish(result.outcome, result)
        return _reply(result)

    def on_error(self, exc: BaseException) -> None:
        self.svc.log.error(
            "internal error",
            request_id=self.request_id,
            path=self.path,
            error=f"{type(exc).__name__}: {exc}",
        )
        self._finish("error")

    async def on_close(self, complete: bool) -> None:
        if self.outcome is None:
            self._finish("cancelled")
        self._parts = []
        self._scanner = None

    # ------------------------------------------------------------- body handling
    async def dispatch(self, req: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        if req.HasField("request_trailers") and self._awaiting_body():
            try:
                return self._body_complete(trailers=True)
            except Exception as exc:  # as the base does for its own hooks
                self.on_error(exc)
                self.finished = True
                return [_internal_error()]
        return await super().dispatch(req)

    def _awaiting_body(self) -> bool:
        """Request trailers now end a body BBR is still waiting for."""
        return not (
            self._headers_decided
            or self.finished
            or self.outcome is not None
            or self.request_body_mode == BodyMode.BUFFERED_PARTIAL
        )

    async def _on_request_body(self, msg: ext_proc.HttpBody) -> list[ext_proc.ProcessingResponse]:
        mode = self.request_body_mode
        if self._headers_decided or mode == BodyMode.BUFFERED_PARTIAL:
            return await super()._on_request_body(msg)
        chunk, eos = msg.body, msg.end_of_stream
        self._size += len(chunk)
        if self._size > self.max_request_body_bytes:
            return [self._reject(BodyRejected(
                413,
                f"request body exceeds {self.max_request_body_bytes} bytes",
                "too_large",
            ))]  # fmt: skip
        if mode == BodyMode.BUFFERED:
            # One message is the whole body (end_of_stream is false only when trailers follow).
            return self._buffered(chunk)
        self._parts.append(chunk)
        self._chunks += 1
        if self._early is not None:
            return self._after_early(chunk, eos)
        if not eos:
            if self._early_capable():
                return self._try_early(chunk)
            # Plain STREAMED: Envoy has already let the headers go, so nothing BBR decides can
            # reach them; pass each chunk on at once and only check the body at its end.
            return [_BODY_CONTINUE]
        return self._body_complete(trailers=False)

    def _body_complete(self, *, trailers: bool) -> list[ext_proc.ProcessingResponse]:
        """The body has ended (end_of_stream, or request trailers): decide and answer."""
        trailer_answer = [_TRAILERS_CONTINUE] if trailers else []
        if self._early is not None:
            return self._early_complete(trailers)
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._scanner = None
        result = self._decide(body)
        if isinstance(result, Reply):
            return [result.immediate] if result.immediate is not None else []
        if self.request_body_mode == BodyMode.BUFFERED:
            self._finish(result.outcome, result)
            return [*self._buffered_answer(result), *trailer_answer]
        if not self._early_capable():  # plain STREAMED
            outcome = result.outcome
            if result.route is not None:
                outcome = "headers_dropped"
                self.svc.warn_once(
                    "headers_dropped",
                    "STREAMED request body without send_body_without_waiting_for_header_response:"
                    " Envoy ignores header mutations in body responses, so BBR cannot route."
                    " Use FULL_DUPLEX_STREAMED or BUFFERED, or set"
                    " send_body_without_waiting_for_header_response",
                )
            self._finish(outcome, result)
            # Every chunk was answered as it came, except the last (none when trailers end it).
            return trailer_answer if trailers else [_BODY_CONTINUE]
        self._finish(result.outcome, result)
        return [*self._deliver_streamed(result, body, eos=not trailers), *trailer_answer]

    def _buffered(self, chunk: bytes) -> list[ext_proc.ProcessingResponse]:
        """BUFFERED: Envoy holds the headers, so the decision rides on the body response."""
        self._parts = []
        result = self._decide(chunk)
        if isinstance(result, Reply):
            return [result.immediate] if result.immediate is not None else []
        self._finish(result.outcome, result)
        return self._buffered_answer(result)

    def _buffered_answer(self, result: Decision) -> list[ext_proc.ProcessingResponse]:
        if result.body is None:
            return [self.svc.responses.body(result.set_headers, result.remove_headers)]
        set_headers = dict(result.set_headers)
        if "content-length" in self.request_headers:
            # Envoy rejects a mutated body whose length disagrees with content-length.
            set_headers["content-length"] = str(len(result.body))
        return [
            ext_proc.ProcessingResponse(
                request_body=ext_proc.BodyResponse(
                    response=common_response(
                        set_headers=set_headers,
                        remove_headers=result.remove_headers,
                        body=result.body,
                        clear_route_cache=True,
                    )
                )
            )
        ]

    def _early_capable(self) -> bool:
        mode = self.request_body_mode
        return mode == BodyMode.FULL_DUPLEX_STREAMED or (
            mode == BodyMode.STREAMED and self.send_body_without_waiting
        )

    def _try_early(self, chunk: bytes) -> list[ext_proc.ProcessingResponse]:
        limit = self.svc.early_scan_bytes
        if limit <= 0 or self._scan_done:
            return []
        start = self._size - len(chunk)  # offset of `chunk` in the body
        if self._scanner is None:
            # The scan walks JSON in Python; start it only when the key can be there (a
            # C-speed find), so bodies that name the model last (as the OpenAI SDK writes
            # them) cost one find per chunk.
            window = self._tail + chunk[: max(0, limit - start) + len(_MODEL_KEY)]
            if _MODEL_KEY not in window:
                self._tail = (self._tail + chunk)[-(len(_MODEL_KEY) - 1) :]
                self._scan_done = self._size >= limit
                return []
            self._scanner = ModelScanner()
            held = b"".join(self._parts)
            token = self._scanner.feed(held[:limit])
        else:
            token = self._scanner.feed(chunk[: max(0, limit - start)])
        if token is None or token.value is None:
            # Not yet; or `model` is not a plain string (the full parse will say what it is).
            if self._scanner.done or self._scanner.scanned >= limit or token is not None:
                self._scan_done = True
                self._scanner = None
            return []
        try:
            decision = self.svc.router.decide_model(token.value)
        except BodyRejected as exc:
            return [self._reject(exc)]
        self._scanner = None
        self._early = decision
        self.svc.metrics.early.inc()
        held = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        set_headers = dict(decision.set_headers)
        route = decision.route
        replacement: bytes | None = None
        if route is not None and route.rewrite_to is not None:
            replacement = splice_model(held, token.start, token.end, route.rewrite_to)
            cl = self.request_headers.get("content-length", "")
            if cl.isdigit():
                delta = len(encode_model(route.rewrite_to)) - (token.end - token.start)
                set_headers["content-length"] = str(int(cl) + delta)
        out = [self.svc.responses.headers(set_headers, decision.remove_headers)]
        if self.request_body_mode == BodyMode.FULL_DUPLEX_STREAMED:
            out.extend(_streamed_body(replacement if replacement is not None else held, eos=False))
        else:  # STREAMED: one answer per chunk received so far, in order
            out.extend(_streamed_mode_answers(self._chunks, replacement))
        return out

    def _after_early(self, chunk: bytes, eos: bool) -> list[ext_proc.ProcessingResponse]:
        """Routed already: answer each chunk as it comes; check the whole body at its end."""
        if not eos:
            full_duplex = self.request_body_mode == BodyMode.FULL_DUPLEX_STREAMED
            return [_streamed(chunk, False) if full_duplex else _BODY_CONTINUE]
        return self._early_complete(trailers=False, last=chunk)

    def _early_complete(
        self, trailers: bool, last: bytes = b""
    ) -> list[ext_proc.ProcessingResponse]:
        early = self._early
        assert early is not None
        body = b"".join(self._parts)
        self._parts = []
        result = self._decide(body, rewrite=False)  # the early answer carried any rewrite
        if isinstance(result, Reply):
            return [result.immediate] if result.immediate is not None else []
        if result.model != early.model:
            return [self._reject(BodyRejected(
                400,
                "request body repeats the top-level model member with different values",
                "invalid_model",
                "model",
            ))]  # fmt: skip
        self._finish(result.outcome, early)
        if trailers:  # every chunk was answered already
            return [_TRAILERS_CONTINUE]
        if self.request_body_mode == BodyMode.FULL_DUPLEX_STREAMED:
            return [_streamed(last, True)]
        return [_BODY_CONTINUE]

    def _deliver_streamed(
        self, decision: Decision, body: bytes, *, eos: bool = True
    ) -> list[ext_proc.ProcessingResponse]:
        """Headers response, then the whole body, once the body is complete."""
        set_headers = dict(decision.set_headers)
        if decision.body is not None and "content-length" in self.request_headers:
            set_headers["content-length"] = str(len(decision.body))
        out = [self.svc.responses.headers(set_headers, decision.remove_headers)]
        if self.request_body_mode == BodyMode.FULL_DUPLEX_STREAMED:
            out.extend(_streamed_body(decision.body if decision.body is not None else body, eos))
        else:
            out.extend(_streamed_mode_answers(self._chunks, decision.body))
        return out

    # ------------------------------------------------------------------ helpers
    def _decide(self, body: bytes, *, rewrite: bool = True) -> Decision | Reply:
        """Route `body`, timing it; a Reply carries the rejection."""
        metrics = self.svc.metrics
        t0 = time.perf_counter()
        try:
            decision = self.svc.router.decide(body, rewrite=rewrite)
        except BodyRejected as exc:
            metrics.parse_seconds.observe(time.perf_counter() - t0)
            metrics.body_bytes.observe(len(body))
            return Reply(immediate=self._reject(exc))
        metrics.parse_seconds.observe(time.perf_counter() - t0)
        if body:
            metrics.body_bytes.observe(len(body))
        return decision

    def _reject(self, exc: BodyRejected) -> ext_proc.ProcessingResponse:
        self.finished = True
        self.svc.log.warning(
            "request rejected",
            request_id=self.request_id,
            path=self.path,
            status=exc.status,
            reason=exc.outcome,
            error=exc.message,
        )
        self._finish(exc.outcome)
        return immediate_response(
            exc.status,
            error_json(exc.status, exc.message, param=exc.param),
            details=f"bbr_{exc.outcome}",
        )

    def _pass(self, outcome: str) -> Reply:
        self._headers_decided = True
        self._finish(outcome)
        return Reply()

    def _finish(self, outcome: str, decision: Decision | None = None) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        metrics = self.svc.metrics
        metrics.record(outcome)
        if decision is not None and decision.route is not None and decision.route.rewrite_to:
            metrics.rewrites.inc()
        if decision is not None and decision.route is not None:
            self.svc.log.debug(
                "routed",
                request_id=self.request_id,
                model=decision.model,
                target=decision.route.model,
                base_model=decision.route.base_model,
                outcome=outcome,
            )
        if self._span is not None:
            self._end_span(outcome, decision)

    def _start_span(self, headers: Headers) -> None:
        from llmd_sdk.telemetry import extract_context

        span = self.svc.tracer.start_span("bbr.route", context=extract_context(headers))
        span.set_attribute("http.request.method", headers.get(":method", ""))
        span.set_attribute("url.path", self.path)
        span.set_attribute("ext_proc.request_body_mode", self.request_body_mode.name)
        if self.request_id:
            span.set_attribute("http.request.header.x-request-id", self.request_id)
        self._span = span

    def _end_span(self, outcome: str, decision: Decision | None) -> None:
        span, self._span = self._span, None
        span.set_attribute("bbr.outcome", outcome)
        span.set_attribute("http.request.body.size", self._size)
        if decision is not None and decision.route is not None:
            span.set_attribute("gen_ai.request.model", decision.model or "")
            span.set_attribute("bbr.target_model", decision.route.model)
            if decision.route.base_model:
                span.set_attribute("bbr.base_model", decision.route.base_model)
        if outcome in ("error",) or outcome.startswith("invalid") or outcome == "too_large":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


def _reply(decision: Decision) -> Reply:
    if decision.route is None:
        return Reply()
    return Reply(
        set_headers=decision.set_headers,
        remove_headers=decision.remove_headers,
        clear_route_cache=True,
        body=decision.body,
    )


class ResponseCache:
    """Routing answers, built once per distinct header set and reused.

    Most traffic names a handful of models, so the same few answers repeat; building a header
    mutation costs more than the rest of a decision. The messages are only ever serialised,
    never changed, so sharing them between streams is safe. Bounded: cleared when full.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._headers: dict[tuple[Any, ...], ext_proc.ProcessingResponse] = {}
        self._bodies: dict[tuple[Any, ...], ext_proc.ProcessingResponse] = {}

    def headers(
        self, set_headers: Mapping[str, str], remove: tuple[str, ...]
    ) -> ext_proc.ProcessingResponse:
        """The request headers answer (streamed modes)."""
        if not set_headers and not remove:
            return _HEADERS_CONTINUE
        key = (tuple(set_headers.items()), remove)
        resp = self._headers.get(key)
        if resp is None:
            resp = ext_proc.ProcessingResponse(
                request_headers=ext_proc.HeadersResponse(
                    response=common_response(
                        set_headers=set_headers, remove_headers=remove, clear_route_cache=True
                    )
                )
            )
            self._store(self._headers, key, resp)
        return resp

    def body(
        self, set_headers: Mapping[str, str], remove: tuple[str, ...]
    ) -> ext_proc.ProcessingResponse:
        """The request body answer carrying the headers (BUFFERED), body unchanged."""
        if not set_headers and not remove:
            return _BODY_CONTINUE
        key = (tuple(set_headers.items()), remove)
        resp = self._bodies.get(key)
        if resp is None:
            resp = ext_proc.ProcessingResponse(
                request_body=ext_proc.BodyResponse(
                    response=common_response(
                        set_headers=set_headers, remove_headers=remove, clear_route_cache=True
                    )
                )
            )
            self._store(self._bodies, key, resp)
        return resp

    def _store(
        self,
        cache: dict[tuple[Any, ...], ext_proc.ProcessingResponse],
        key: tuple[Any, ...],
        resp: ext_proc.ProcessingResponse,
    ) -> None:
        if len(cache) >= self._limit:
            cache.clear()
        cache[key] = resp


def _streamed(chunk: bytes, eos: bool) -> ext_proc.ProcessingResponse:
    cr = ext_proc.CommonResponse()
    cr.body_mutation.streamed_response.body = chunk
    cr.body_mutation.streamed_response.end_of_stream = eos
    return ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse(response=cr))


def _streamed_body(body: bytes, eos: bool) -> list[ext_proc.ProcessingResponse]:
    """`body` as FULL_DUPLEX_STREAMED body responses of at most 64 KiB; the last carries `eos`."""
    n = len(body)
    if n <= STREAM_CHUNK:
        return [_streamed(body, eos)]
    return [
        _streamed(body[i : i + STREAM_CHUNK], eos and i + STREAM_CHUNK >= n)
        for i in range(0, n, STREAM_CHUNK)
    ]


def _streamed_mode_answers(
    chunks: int, replacement: bytes | None
) -> list[ext_proc.ProcessingResponse]:
    """STREAMED mode: one answer per chunk received; a replacement body rides on the first
    answer and clears the others."""
    if replacement is None:
        return [_BODY_CONTINUE] * chunks
    out = []
    for i in range(chunks):
        cr = ext_proc.CommonResponse()
        if i == 0 and replacement:
            cr.body_mutation.body = replacement
        else:
            cr.body_mutation.clear_body = True
        out.append(ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse(response=cr)))
    return out
