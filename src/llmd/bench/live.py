"""The live benchmark: real engine processes behind each router, one trace per (router, rate).

N `llmd-sim` engines (calibrated latency profile, time-scaled) run for the whole benchmark, each
binding its own KV-event PUB socket; kvmanager subscribes to all of them. Per cell the engines'
prefix caches are reset (`POST /reset_prefix_cache`, which also clears kvmanager's view through
the engines' AllBlocksCleared events), the router under test is started, its overhead probed,
the trace replayed (or, with `--driver inference-perf`, inference-perf's load run: see
`llmd.bench.inference_perf`), the engines' own counters read, and the router stopped.

Routers:
    round-robin          a plain HTTP round-robin proxy (a Kubernetes Service)
    epp-default          dev gateway + our EPP, upstream default config (queue, kv-utilization,
                         approximate prefix)
    epp-precise          dev gateway + our EPP, precise prefix scoring through kvmanager
    vllm-router-cache    vllm-router --policy cache_aware
    vllm-router-kv       vllm-router --policy kv_aware, fed by the engines' KV events
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmd.bench.client import probe_latency, run_trace
from llmd.bench.inference_perf import InferencePerfDriver
from llmd.bench.stats import percentile, summarize
from llmd.bench.workload import ChatTurn
from llmd.local.logs import LogSink
from llmd.local.ports import free_ports
from llmd.local.probes import GrpcHealthProbe, HttpProbe
from llmd.local.process import ProcessSpec
from llmd.local.supervisor import StartError, Supervisor

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HASH_SEED = "42"

# Both EPP configs name their picker only to ask for a second endpoint: the dev gateway's
# fallback when the first fails before answering (Envoy's retry_on connect-failure), so a
# dropped connection costs a retry, not a 503. The first pick is the one the policy chose.
_PICKER = {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 2}}

UPSTREAM_DEFAULT_EPP = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
        _PICKER,
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}

PRECISE_EPP = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "single-profile-handler"},
        # As llm-d's precise-prefix-cache-aware guide: entries for a decision's prefix until
        # the engine's KV events report it (a queued request's blocks come only after prefill).
        {"type": "precise-prefix-cache-scorer", "parameters": {"speculativeIndexing": True}},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "queue-scorer"},
        # Not in the guide's profile: without it a prompt no engine holds goes by load alone,
        # and new system prompts pile onto a few engines (DES, 64 engines, 256 req/s: the
        # busiest engine took 0.023 of the requests, 0.018 with it; P90/p99 TTFT 200/376 ms
        # -> 185/247 ms; benchmarks/ttft_tail_des.py). It reads "cold" from the precise
        # scorer's answer.
        {
            "type": "no-hit-lru-scorer",
            "parameters": {"prefixPluginName": "precise-prefix-cache-scorer"},
        },
        _PICKER,
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "no-hit-lru-scorer", "weight": 1},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}

ROUTERS = (
    "round-robin",
    "epp-default",
    "epp-precise",
    "vllm-router-cache",
    "vllm-router-kv",
)


class RouterUnavailable(RuntimeError):
    """The router cannot run here (e.g. vllm-router not installed); the message says why."""


@dataclass(slots=True)
class EngineOptions:
    engines: int = 4
    time_scale: float = 1.0
    latency_profile: str | None = None
    num_gpu_blocks: int | None = None
    max_num_seqs: int = 128
    # How the dev gateway hands the response to the EPP: FULL_DUPLEX_STREAMED as the Inference
    # Extension configures Envoy, or NONE (request path only) to see the routing policy without
    # the per-chunk ext_proc cost our Python gateway and EPP pay on a shared CPU.
    epp_response_body: str = "FULL_DUPLEX_STREAMED"
    extra_args: list[str] = field(default_factory=list)


def _console_script(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def find_vllm_router() -> str | None:
    """vllm-router's binary: $LLMD_VLLM_ROUTER, beside this Python, or on PATH."""
    env = os.environ.get("LLMD_VLLM_ROUTER")
    if env:
        return env if Path(env).exists() else None
    return _console_script("vllm-router")


class LiveCluster:
    """Engines and kvmanager, up for the whole benchmark; routers come and go per cell."""

    def __init__(self, opts: EngineOptions, sink: LogSink, workdir: Path) -> None:
        self.opts = opts
        self.sink = sink
        self.workdir = workdir
        n = opts.engines
        ports = free_ports(2 * n + 2)
        self.engine_ports = ports[:n]
        self.zmq_ports = ports[n : 2 * n]
        self.kv_grpc, self.kv_http = ports[2 * n], ports[2 * n + 1]
        self.endpoints = [f"127.0.0.1:{p}" for p in self.engine_ports]
        self.supervisor: Supervisor | None = None

    def _engine(self, i: int) -> ProcessSpec:
        o = self.opts
        port, zmq = self.engine_ports[i], self.zmq_ports[i]
        # vLLM's default (empty) topic, not llm-d's "kv@<endpoint>@<model>": vllm-router's static
        # --kv-event-source has no topic setting (always ""), and it silently drops every batch
        # whose topic frame is not that topic, so with a "kv@..." topic its kv_aware index stays
        # empty and every lookup misses. kvmanager does not need the topic: its `engines` list
        # names each engine's endpoint and model.
        kv_events = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{zmq}",
        }
        argv = [
            *_python_module("llmd_sim.server"),
            "--model",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-num-seqs",
            str(o.max_num_seqs),
            "--time-scale",
            f"{o.time_scale:g}",
            "--kv-events-config",
            json.dumps(kv_events),
            "--log-format",
            "json",
            "--log-level",
            "WARNING",
            "--disable-log-requests",
        ]
        if o.latency_profile:
            argv += ["--latency-profile", o.latency_profile]
        if o.num_gpu_blocks:
            argv += ["--num-gpu-blocks-override", str(o.num_gpu_blocks)]
        argv += o.extra_args
        return ProcessSpec(
            name=f"engine-{i}",
            argv=argv,
            env={"PYTHONHASHSEED": HASH_SEED},
            address=self.endpoints[i],
            probe=HttpProbe(f"http://{self.endpoints[i]}/health"),
            stage=0,
            stop_rank=2,
        )

    def _kvmanager(self) -> ProcessSpec:
        doc = {
            "host": "127.0.0.1",
            "grpc_port": self.kv_grpc,
            "http_port": self.kv_http,
            "log_level": "WARNING",
            "engines": [
                {"endpoint": ep, "zmq": f"tcp://127.0.0.1:{z}", "model": MODEL}
                for ep, z in zip(self.endpoints, self.zmq_ports, strict=True)
            ],
            "models": [{"name": MODEL, "builtin_tokenizer": True, "hash_seed": HASH_SEED}],
        }
        path = self.workdir / "kvmanager.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return ProcessSpec(
            name="kvmanager",
            argv=[*_python_module("llmd_kvmanager.server"), "--config", str(path)],
            address=f"127.0.0.1:{self.kv_grpc}",
            probe=HttpProbe(f"http://127.0.0.1:{self.kv_http}/readyz"),
            stage=0,
            stop_rank=1,
        )

    async def start(self, timeout: float = 120.0) -> None:
        specs = [self._engine(i) for i in range(self.opts.engines)] + [self._kvmanager()]
        self.supervisor = Supervisor(specs, self.sink)
        await self.supervisor.start(timeout=timeout)

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None

    async def reset(self, client: httpx.AsyncClient) -> None:
        """Empty every engine's prefix cache (kvmanager follows through the KV events)."""
        for ep in self.endpoints:
            resp = await client.post(f"http://{ep}/reset_prefix_cache", timeout=30)
            resp.raise_for_status()

    async def counters(self, client: httpx.AsyncClient) -> dict[str, float]:
        """Summed engine counters: prefix-cache queries and hits, tokens, successes."""
        names = {
            "vllm:prefix_cache_queries_total": "prefix_queries",
            "vllm:prefix_cache_hits_total": "prefix_hits",
            "vllm:generation_tokens_total": "generation_tokens",
            "vllm:prompt_tokens_total": "prompt_tokens",
            "vllm:request_success_total": "successes",
        }
        out = dict.fromkeys(names.values(), 0.0)
        for ep in self.endpoints:
            text = (await client.get(f"http://{ep}/metrics", timeout=30)).text
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name in names:
                        out[names[s.name]] += s.value
        return out

    async def per_engine_successes(self, client: httpx.AsyncClient) -> list[float]:
        counts = []
        for ep in self.endpoints:
            text = (await client.get(f"http://{ep}/metrics", timeout=30)).text
            counts.append(
                sum(
                    s.value
                    for fam in text_string_to_metric_families(text)
                    for s in fam.samples
                    if s.name == "vllm:request_success_total"
                )
            )
        return counts

    # ------------------------------------------------------------------ routers
    def router_specs(self, router: str, workdir: Path) -> tuple[list[ProcessSpec], str]:
        """The processes of `router` and the URL clients send to."""
        port, p2, p3, p4 = free_ports(4)
        url = f"http://127.0.0.1:{port}"
        if router == "round-robin":
            spec = ProcessSpec(
                name="rr-proxy",
                argv=[
                    *_python_module("llmd.bench.rrproxy"),
                    "--port",
                    str(port),
                    "--endpoints",
                    ",".join(self.endpoints),
                ],
                address=url,
                probe=HttpProbe(f"{url}/healthz"),
            )
            return [spec], url
        if router in ("epp-default", "epp-precise"):
            cfg = UPSTREAM_DEFAULT_EPP if router == "epp-default" else PRECISE_EPP
            cfg_path = workdir / f"{router}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            epp = ProcessSpec(
                name="epp",
                argv=[
                    *_python_module("llmd_epp"),
                    "--host",
                    "127.0.0.1",
                    "--grpc-port",
                    str(p2),
                    "--grpc-health-port",
                    str(p3),
                    "--metrics-port",
                    str(p4),
                    "--config-file",
                    str(cfg_path),
                    "--endpoints",
                    ",".join(self.endpoints),
                    "--kvmanager-address",
                    f"127.0.0.1:{self.kv_grpc}",
                    "--pool-name",
                    "bench",
                    "--log-level",
                    "WARNING",
                    "--seed",
                    "1",
                ],
                address=f"127.0.0.1:{p2}",
                probe=GrpcHealthProbe(f"127.0.0.1:{p3}"),
                stage=0,
                stop_rank=1,
            )
            gw_doc = {
                "host": "127.0.0.1",
                "port": port,
                "pools": [
                    {
                        "name": "bench",
                        "models": [MODEL],
                        "epp": {
                            "target": f"127.0.0.1:{p2}",
                            "request_body_mode": "FULL_DUPLEX_STREAMED",
                            "response_body_mode": self.opts.epp_response_body,
                        },
                    }
                ],
                "default_pool": "bench",
            }
            gw_path = workdir / f"{router}-gateway.yaml"
            gw_path.write_text(yaml.safe_dump(gw_doc, sort_keys=False))
            gateway = ProcessSpec(
                name="gateway",
                argv=[
                    *_python_module("llmd.gateway"),
                    "--config",
                    str(gw_path),
                    "--log-level",
                    "warning",
                ],
                address=url,
                probe=HttpProbe(f"{url}/healthz"),
                stage=1,
                stop_rank=0,
            )
            return [epp, gateway], url
        if router in ("vllm-router-cache", "vllm-router-kv"):
            binary = find_vllm_router()
            if binary is None:
                raise RouterUnavailable(
                    "vllm-router is not installed (pip install vllm-router, or set "
                    "LLMD_VLLM_ROUTER to its binary)"
                )
            argv = [
                binary,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--prometheus-port",
                str(p2),
                "--worker-urls",
                *(f"http://{ep}" for ep in self.endpoints),
                "--log-level",
                "warning",
            ]
            if router == "vllm-router-cache":
                argv += ["--policy", "cache_aware"]
            else:
                # --kv-event-model names the index's model identity, shared by the static
                # sources; it is not a tokenizer (vllm-router 0.1.17 takes prompt token ids from
                # the engines' /tokenize: vllm_router_kv_routing_inputs_total{transport="http"}).
                argv += ["--policy", "kv_aware", "--kv-event-block-size", "16"]
                argv += ["--kv-event-model", MODEL]
                for ep, z in zip(self.endpoints, self.zmq_ports, strict=True):
                    argv += ["--kv-event-source", f"http://{ep}=tcp://127.0.0.1:{z}"]
            spec = ProcessSpec(
                name=router,
                argv=argv,
                env={"PYTHONHASHSEED": HASH_SEED},
                address=url,
                probe=HttpProbe(f"{url}/health"),
                restart=False,
            )
            return [spec], url
        raise ValueError(f"unknown router {router!r}; one of {', '.join(ROUTERS)}")


def router_metrics_url(specs: Sequence[ProcessSpec]) -> str | None:
    """The router's own Prometheus endpoint: vllm-router's --prometheus-port or our EPP's
    --metrics-port; None for the round-robin proxy."""
    for spec in specs:
        argv = list(spec.argv)
        for flag in ("--prometheus-port", "--metrics-port"):
            if flag in argv:
                return f"http://127.0.0.1:{argv[argv.index(flag) + 1]}/metrics"
    return None


def router_prefix_stats(text: str) -> dict[str, dict[str, float]]:
    """What the router says about its own prefix routing: vllm-router's KV-index lookups by
    result and routing decisions by outcome (so a kv_aware run whose index never matched
    shows it), our EPP's failed or timed-out kvmanager score calls."""
    wanted = {
        "vllm_router_kv_placement_lookups_total": ("kv_index_lookups", "result"),
        "vllm_router_prefix_routing_decisions_total": ("prefix_decisions", "outcome"),
        "llm_d_epp_kvindex_errors_total": ("kvmanager_score_errors", ""),
    }
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in wanted:
                key, label = wanted[s.name]
                by = out.setdefault(key, {})
                name = s.labels.get(label, "")
                by[name] = by.get(name, 0.0) + s.value
    return out


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


async def run_cell(
    cluster: LiveCluster,
    router: str,
    rate: float,
    trace: Sequence[ChatTurn],
    *,
    probe_requests: int = 20,
    timeout_s: float = 600.0,
    log: Callable[[str], None] = print,
    driver: InferencePerfDriver | None = None,
) -> dict[str, Any]:
    """One router at one rate: reset caches, start it, probe, replay, read counters, stop.

    The load is the bench's own client replaying `trace`, or `driver` (inference-perf)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{router}-", dir=cluster.workdir))
    specs, url = cluster.router_specs(router, workdir)
    sup = Supervisor(specs, cluster.sink)
    scale = cluster.opts.time_scale
    async with httpx.AsyncClient() as client:
        await cluster.reset(client)
        try:
            await sup.start(timeout=120)
            # The router's own cost: one-token requests through it and straight to an engine.
            direct = await probe_latency(f"http://{cluster.endpoints[0]}", MODEL, probe_requests)
            routed = await probe_latency(url, MODEL, probe_requests)
            await cluster.reset(client)
            before = await cluster.counters(client)
            spread0 = await cluster.per_engine_successes(client)
            t = time.perf_counter()
            if driver is None:
                results, wall = await run_trace(
                    url, trace, model=MODEL, time_scale=scale, timeout_s=timeout_s
                )
            else:
                results, wall = await driver.run(url, rate, workdir)
            log(f"  {router} @ {rate:g} req/s: {len(results)} requests in {wall:.1f}s real")
            after = await cluster.counters(client)
            spread1 = await cluster.per_engine_successes(client)
            metrics_url = router_metrics_url(specs)
            router_stats = (
                router_prefix_stats((await client.get(metrics_url, timeout=30)).text)
                if metrics_url
                else {}
            )
        finally:
            await sup.stop()
    summary = summarize(results, time_scale=scale, offered_rps=rate)
    queries = after["prefix_queries"] - before["prefix_queries"]
    hits = after["prefix_hits"] - before["prefix_hits"]
    summary.update(
        router=router,
        rate_rps=rate,
        wall_s=time.perf_counter() - t,
        # Every process of the run shares this machine's CPUs: how busy they were.
        load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        prefix_hit_rate=hits / queries if queries else float("nan"),
        engine_requests=[b - a for a, b in zip(spread0, spread1, strict=True)],
        # Cumulative over the probes and the trace (the router starts fresh per cell).
        router_stats=router_stats,
        overhead_direct_p50_ms=percentile(direct, 50) * 1e3,
        overhead_routed_p50_ms=percentile(routed, 50) * 1e3,
        overhead_added_p50_ms=(percentile(routed, 50) - percentile(direct, 50)) * 1e3,
        overhead_added_p99_ms=(percentile(routed, 99) - percentile(direct, 99)) * 1e3,
        ttft_s=sorted(round(r.ttft / scale, 6) for r in results if r.ok and r.ttft is not None)
        if scale > 0
        else [],
    )
    return summary


async def run_live(
    opts: EngineOptions,
    routers: Sequence[str],
    rates: Sequence[float],
    trace_for: Callable[[float], list[ChatTurn]],
    sink: LogSink,
    log: Callable[[str], None] = print,
    driver: InferencePerfDriver | None = None,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every (router, rate) cell on one set of engines; returns the cells and skipped routers."""
    cells: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    cluster = LiveCluster(opts, sink, workdir)
    try:
        await cluster.start()
        for rate in rates:
            trace = trace_for(rate)
            for router in routers:
                if router in skipped:
                    continue
                try:
                    cells.append(
                        await run_cell(cluster, router, rate, trace, log=log, driver=driver)
                    )
                except RouterUnavailable as exc:
                    skipped[router] = str(exc)
                    log(f"  {router}: skipped: {exc}")
                except StartError as exc:
                    skipped[router] = f"did not start: {exc}"
                    log(f"  {router}: skipped: {skipped[router]}")
    finally:
        await cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return cells, skipped


def run_live_sync(*args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return asyncio.run(run_live(*args, **kwargs))
