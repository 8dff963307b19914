"""The request path: from a parsed body and Envoy's metadata to a destination, or to a 4xx/5xx.

    parse body (400) -> candidates (subset hint, 503) -> admission (429 / queue / 503)
      -> prepare data (kvmanager) -> schedule (503) -> pre_request hooks -> headers + envoy.lb

and on the way back: the served endpoint and the response `usage` feed the plugins'
`response_complete` hooks and the metrics. Every request ends in exactly one outcome
(picked, shed, rejected, unavailable, timeout, bad_request, error) and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.extproc import Reply, error_response
from llmd_sdk.openai import ChatCompletionRequest, CompletionRequest, OpenAIError, parse_request
from llmd_sdk.telemetry import TRACEPARENT, extract_context, get_logger, get_tracer
from opentelemetry import trace

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.flowcontrol.controller import DEFAULT_TTL, BandLimits, FlowController, Outcome
from llmd_epp.metrics import EPPMetrics
from llmd_epp.objectives import FAIRNESS_HEADER, Objectives
from llmd_epp.pickerconfig import PickerConfig, PriorityBandSpec
from llmd_epp.scheduling.framework import Plugin, PrepareData
from llmd_epp.scheduling.plugins.pd_profile_handler import PdProfileHandler
from llmd_epp.scheduling.prefix_index import PrefixMatch
from llmd_epp.scheduling.types import (
    DATA_PARALLEL_HEADER,
    DP_RANK_HEADER,
    PREFILLER_HEADER,
    Endpoint,
    LLMRequest,
    SchedulingError,
    SchedulingResult,
)
from llmd_epp.usage import UsageTracker

DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
REQUEST_ID_HEADER = "x-request-id"
# Headers only the EPP may set: a client cannot pick its prefiller or rank.
_DECISION_HEADERS = (PREFILLER_HEADER, DATA_PARALLEL_HEADER, DP_RANK_HEADER)

log = get_logger("llmd_epp.director")
_tracer = get_tracer("llmd_epp")
_NO_SPAN = trace.INVALID_SPAN


@dataclass(slots=True, eq=False)
class RequestContext:
    """One exchange's request state, from decision to response completion."""

    request: LLMRequest
    model: str
    target_model: str
    started: float
    result: SchedulingResult | None = None
    served: str | None = None
    status: int = 0
    usage: UsageTracker = field(default_factory=UsageTracker)
    finished: bool = False


class Director:
    def __init__(
        self,
        picker: PickerConfig,
        store: Datastore,
        metrics: EPPMetrics,
        *,
        objectives: Objectives | None = None,
        flow: FlowController | None = None,
        pool_name: str = "",
        debug_scores: bool = False,
        plugin_timing_every: int = 8,
        clock: Any = time.monotonic,
    ) -> None:
        self.picker = picker
        self.scheduler = picker.scheduler
        self.store = store
        self.metrics = metrics
        self.objectives = objectives or Objectives()
        self.flow = flow or build_flow_controller(
            picker, store, on_queue_change=self._queue_changed
        )
        self.pool_name = pool_name
        self.debug_scores = debug_scores
        self.clock = clock
        self.in_flight: dict[str, int] = {}
        self._preparers = [p for p in self.scheduler.plugins if isinstance(p, PrepareData)]
        self._prefix_plugins = [
            p.name for p in self.scheduler.plugins if p.TYPE == "prefix-cache-scorer"
        ]
        self._pd = next(
            (p for p in self.scheduler.plugins if isinstance(p, PdProfileHandler)), None
        )
        self._pd_seen = {"decode-only": 0, "prefill-decode": 0}
        self.scheduler.set_observer(self._observe_plugin, every=plugin_timing_every)
        store.on_removed.append(self._endpoint_removed)
        # Spans cost tens of microseconds: make them when someone will see them (an exporter
        # is configured, or the caller is tracing this request).
        self.always_trace = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        self._plugin_children: dict[tuple[str, int], Any] = {}
        self._objective_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._outcome_children: dict[str, Any] = {}

    # ----------------------------------------------------------------- helpers
    def _queue_changed(self, priority: int, fairness_id: str, size: int) -> None:
        self.metrics.fc_queue_size.labels(fairness_id, str(priority), self.pool_name).set(size)

    def _observe_plugin(self, point: str, plugin: Plugin, seconds: float) -> None:
        key = (point, id(plugin))
        child = self._plugin_children.get(key)
        if child is None:
            child = self.metrics.plugin_duration.labels(point, plugin.TYPE, plugin.name)
            self._plugin_children[key] = child
        child.observe(seconds)

    def _outcome(self, outcome: str) -> None:
        child = self._outcome_children.get(outcome)
        if child is None:
            child = self._outcome_children[outcome] = self.metrics.outcomes.labels(outcome)
        child.inc()

    def _objective(self, model: str, target: str) -> tuple[Any, Any, Any]:
        """(request counter, request size histogram, running gauge) children of a model."""
        key = (model, target)
        children = self._objective_children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(model, target),
                m.request_sizes.labels(model, target),
                m.running.labels(model),
            )
            self._objective_children[key] = children
        return children

    def _endpoint_removed(self, ep: Endpoint) -> None:
        self.scheduler.endpoint_removed(ep.key)
        self.in_flight.pop(ep.key, None)
        with contextlib.suppress(KeyError):
            self.metrics.endpoint_in_flight.remove(ep.key)

    def _fail(
        self, status: int, message: str, outcome: str, model: str = "", target: str = ""
    ) -> Reply:
        self._outcome(outcome)
        self.metrics.request_errors.labels(model, target, _error_code(status)).inc()
        return Reply(immediate=error_response(status, message, details=f"epp_{outcome}"))

    @staticmethod
    def build_request(
        parsed: ChatCompletionRequest | CompletionRequest | None,
        headers: Mapping[str, str],
    ) -> LLMRequest:
        rid = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        if parsed is None:
            return LLMRequest(request_id=rid, headers=headers)
        req = LLMRequest(
            request_id=rid,
            model=parsed.model,
            target_model=parsed.model,
            prompt=parsed.prompt_text(),
            cache_salt=parsed.cache_salt,
            headers=headers,
        )
        if isinstance(parsed, ChatCompletionRequest):
            req.messages = [{"role": m.role, "content": m.text()} for m in parsed.messages]
        else:
            req.token_ids = parsed.prompt_token_ids()
        return req

    def _subset(self, metadata: Mapping[str, Mapping[str, Any]]) -> set[str] | None:
        hint = metadata.get(SUBSET_NAMESPACE)
        if hint is None or SUBSET_KEY not in hint:
            return None
        value = hint[SUBSET_KEY]
        items = value if isinstance(value, list) else str(value).split(",")
        return {str(v).strip() for v in items if str(v).strip()}

    # ------------------------------------------------------------- request side
    async def handle_request(
        self,
        headers: Mapping[str, str],
        body: bytes,
        metadata: Mapping[str, Mapping[str, Any]],
    ) -> tuple[Reply, RequestContext | None]:
        started = self.clock()
        parsed = None
        if body:
            try:
                parsed = parse_request(body, headers.get(":path", ""))
            except OpenAIError as exc:
                self._outcome("bad_request")
                self.metrics.request_errors.labels("", "", "BadRequest").inc()
                return Reply(
                    immediate=error_response(400, exc.message, details="epp_bad_request")
                ), None
        request = self.build_request(parsed, headers)
        model = request.model
        target = request.target_model
        request.objective = self.objectives.objective_of(headers)
        request.priority = self.objectives.priority(request.objective)

        candidates = self.store.candidates()
        subset = self._subset(metadata)
        if subset is not None:
            candidates = [e for e in candidates if e.key in subset or e.address in subset]
            if not candidates:
                return self._fail(
                    503, "no ready endpoint in the requested subset", "unavailable", model, target
                ), None
        if not candidates:
            return self._fail(
                503, "no ready endpoints in the pool", "unavailable", model, target
            ), None

        fairness = headers.get(FAIRNESS_HEADER, "")
        outcome, waited = await self.flow.admit(candidates, request.priority, fairness, len(body))
        if waited is not None:
            self.metrics.fc_queue_duration.labels(
                fairness, str(request.priority), outcome.value, self.pool_name, model, target
            ).observe(waited)
        if outcome is Outcome.SHED:
            return self._fail(
                429, "pool saturated: sheddable request shed", "shed", model, target
            ), None
        if outcome is Outcome.REJECTED_CAPACITY:
            return self._fail(429, "flow control queue is full", "rejected", model, target), None
        if outcome is Outcome.EVICTED_TTL:
            return self._fail(
                503, "request timed out in the flow control queue", "timeout", model, target
            ), None
        if outcome is Outcome.NO_ENDPOINTS:
            return self._fail(
                503, "no ready endpoints in the pool", "unavailable", model, target
            ), None
        if subset is None:
            candidates = self.store.candidates()  # may have changed while queued
        else:
            candidates = [
                e for e in self.store.candidates() if e.key in subset or e.address in subset
            ]
        if not candidates:
            return self._fail(
                503, "no ready endpoints in the pool", "unavailable", model, target
            ), None

        tracing = self.always_trace or TRACEPARENT in headers
        span_cm: Any = (
            _tracer.start_as_current_span(
                "llm_d.epp.schedule",
                context=extract_context(headers),
                kind=trace.SpanKind.INTERNAL,
                attributes={
                    "gen_ai.request.model": model,
                    "llm_d.epp.candidates": len(candidates),
                    "llm_d.epp.priority": request.priority,
                },
            )
            if tracing
            else contextlib.nullcontext(_NO_SPAN)
        )
        with span_cm as span:
            if self._preparers:
                await asyncio.gather(*(p.prepare(request, candidates) for p in self._preparers))
            t0 = time.perf_counter()
            try:
                result = self.scheduler.schedule(request, candidates, self.clock())
            except SchedulingError as exc:
                span.set_attribute("llm_d.epp.outcome", "unavailable")
                return self._fail(
                    503, f"no endpoint can serve the request: {exc}", "unavailable", model, target
                ), None
            now = self.clock()
            self.scheduler.pre_request(request, result, now)
            self.metrics.scheduler_e2e.observe(time.perf_counter() - t0)
            dests = ",".join(result.destination_list())
            span.set_attribute("llm_d.epp.endpoint", dests)
            span.set_attribute("llm_d.epp.outcome", "picked")

        ctx = RequestContext(request, model, target, started, result=result)
        self._record_pick(ctx, len(body))
        set_headers = {DESTINATION_HEADER: dests, **result.headers}
        remove = tuple(h for h in _DECISION_HEADERS if h in headers and h not in result.headers)
        reply = Reply(
            set_headers=set_headers,
            remove_headers=remove,
            dynamic_metadata={LB_NAMESPACE: {DESTINATION_HEADER: dests}},
        )
        return reply, ctx

    def _record_pick(self, ctx: RequestContext, size: int) -> None:
        m = self.metrics
        self._outcome("picked")
        requests, sizes, running = self._objective(ctx.model, ctx.target_model)
        requests.inc()
        sizes.observe(size)
        if ctx.model:
            running.inc()
        assert ctx.result is not None
        key = ctx.result.primary.key
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        m.endpoint_in_flight.labels(key).set(self.in_flight[key])
        for name in self._prefix_plugins:
            pm = ctx.request.state.get(name)
            if isinstance(pm, PrefixMatch) and pm.total_blocks:
                m.prefix_hit_ratio.observe(pm.hit_ratio(key))
                m.prefix_hit_bytes.observe(pm.matched_chars(key))
        if self._pd is not None:
            for kind, n in self._pd.decisions.items():
                if n > self._pd_seen[kind]:
                    m.pd_decisions.labels(kind).inc(n - self._pd_seen[kind])
                    self._pd_seen[kind] = n
        if self.debug_scores:
            for profile, res in ctx.result.profile_results.items():
                for ep_key, score in res.scores.items():
                    m.endpoint_score.labels(profile, ep_key).set(score)

    # ------------------------------------------------------------ response side
    def response_headers(
        self,
        ctx: RequestContext,
        headers: Mapping[str, str],
        metadata: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, str]:
        served = (metadata.get(LB_NAMESPACE) or {}).get(SERVED_KEY)
        assert ctx.result is not None
        ctx.served = str(served) if served else ctx.result.primary.key
        try:
            ctx.status = int(headers.get(":status", "200"))
        except ValueError:
            ctx.status = 0
        return self.scheduler.response_headers(ctx.request, ctx.served)

    def response_chunk(self, ctx: RequestContext, chunk: bytes) -> None:
        ctx.usage.feed(chunk)

    def finish(self, ctx: RequestContext, complete: bool) -> None:
        """The exchange ended (complete or not): release state, record the response."""
        if ctx.finished:
            return
        ctx.finished = True
        now = self.clock()
        usage = ctx.usage.usage()
        served = ctx.served or (ctx.result.primary.key if ctx.result else None)
        self.scheduler.response_complete(ctx.request, served, now, usage)
        m = self.metrics
        if ctx.model:
            self._objective(ctx.model, ctx.target_model)[2].dec()
        if ctx.result is not None:
            key = ctx.result.primary.key
            n = self.in_flight.get(key, 0) - 1
            if n > 0:
                self.in_flight[key] = n
            else:
                self.in_flight.pop(key, None)
            if self.store.get(key) is not None:
                m.endpoint_in_flight.labels(key).set(max(n, 0))
        labels = (ctx.model, ctx.target_model)
        if ctx.status >= 400:
            m.request_errors.labels(*labels, _error_code(ctx.status)).inc()
        if not complete:
            return
        elapsed = now - ctx.started
        m.request_duration.labels(*labels).observe(elapsed)
        m.response_sizes.labels(*labels).observe(ctx.usage.size)
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            if prompt > 0:
                m.input_tokens.labels(*labels).observe(prompt)
            if completion > 0:
                m.output_tokens.labels(*labels).observe(completion)
                if elapsed > 0:
                    m.ntpot.labels(*labels).observe(elapsed / completion)

    def refresh_pool_gauges(self) -> None:
        cands = self.store.candidates()
        name = self.pool_name
        m = self.metrics
        m.pool_ready.labels(name).set(len(cands))
        if cands:
            n = len(cands)
            m.pool_kv.labels(name).set(sum(e.metrics.kv_usage for e in cands) / n)
            m.pool_queue.labels(name).set(sum(e.metrics.waiting for e in cands) / n)
            m.pool_running.labels(name).set(sum(e.metrics.running for e in cands) / n)
        size = 0
        for p in self.scheduler.plugins:
            index = getattr(p, "index", None)
            if index is not None and hasattr(index, "__len__"):
                size += len(index)
        m.prefix_size.set(size)


def build_flow_controller(
    picker: PickerConfig,
    store: Datastore,
    *,
    enabled: bool | None = None,
    default_ttl: float | None = None,
    on_queue_change: Any = None,
) -> FlowController:
    """A flow controller from the config's `flowControl` section and feature gate."""
    fc = picker.flow_control

    def limits(band: PriorityBandSpec | None) -> BandLimits:
        if band is None:
            return BandLimits()
        ref = band.fairnessPolicyRef
        plugin = picker.plugins.get(ref) if ref else None
        kind = plugin.TYPE if plugin is not None else ref
        return BandLimits(band.maxRequests, band.maxBytes, kind == "round-robin-fairness-policy")

    return FlowController(
        picker.detector,
        store.candidates,
        lambda: store.metrics_generation,
        enabled=fc.enabled if enabled is None else enabled,
        default_ttl=default_ttl or fc.default_ttl or DEFAULT_TTL,
        max_requests=fc.max_requests,
        max_bytes=fc.max_bytes,
        bands={p: limits(b) for p, b in fc.bands.items()},
        default_band=limits(fc.default_band),
        on_queue_change=on_queue_change,
    )


def _error_code(status: int) -> str:
    return {
        400: "BadRequest",
        429: "InferencePoolResourceExhausted",
        503: "ServiceUnavailable",
        504: "DeadlineExceeded",
    }.get(status, "Internal" if status >= 500 else str(status))
