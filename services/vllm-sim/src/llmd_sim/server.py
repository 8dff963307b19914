"""The vllm-sim server: vLLM's OpenAI API, metrics and KV events over simulated engines.

Wiring only: `build_state` turns a `SimConfig` into tokenizer, engines, runners, publishers and
metrics; `create_app` exposes them with FastAPI; `main` is the ``llmd-sim`` console script
(uvicorn, graceful on SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from llmd_sdk.kvcache.hashing import BlockHasher, to_external
from llmd_sdk.openai import OpenAIError, decode_json, error_json
from llmd_sdk.telemetry import configure_logging, get_logger, new_registry
from llmd_sdk.tokenizer import Tokenizer, load_tokenizer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.requests import ClientDisconnect

import llmd_sim
from llmd_sim import responses as R
from llmd_sim.config import ConfigError, SimConfig, parse_args
from llmd_sim.engine import EngineConfig, EngineCore
from llmd_sim.failures import FailureInjector
from llmd_sim.generation import OutputPlanner
from llmd_sim.kv_publisher import ZmqEventPublisher
from llmd_sim.latency import LatencyModel, load_profile
from llmd_sim.lora import LoRARegistry
from llmd_sim.metrics import VllmMetrics
from llmd_sim.runner import EngineRunner
from llmd_sim.serving import Serving

log = get_logger("llmd_sim.server")


@dataclass
class SimState:
    config: SimConfig
    tokenizer: Tokenizer
    serving: Serving
    runners: list[EngineRunner]
    publishers: list[ZmqEventPublisher]
    metrics: VllmMetrics
    registry: CollectorRegistry
    loras: LoRARegistry
    failures: FailureInjector
    started: int


def _resolve_tokenizer(cfg: SimConfig) -> Tokenizer:
    path = cfg.tokenizer
    if path is None and os.path.isfile(os.path.join(cfg.model, "tokenizer.json")):
        path = cfg.model  # vLLM reads the tokenizer from a local model directory
    return load_tokenizer(path, chat_template=cfg.chat_template)


def build_state(cfg: SimConfig) -> SimState:
    """Everything the server runs, from its configuration (raises ValueError on bad input)."""
    tokenizer = _resolve_tokenizer(cfg)
    profile = load_profile(cfg.latency_profile)
    if profile.provisional and cfg.time_scale > 0:
        log.warning(
            "latency_profile_provisional",
            profile=profile.name,
            hint="step times are estimates; calibrate with benchmarks/calibrate_gpu.py",
        )
    latency = LatencyModel(profile, cfg.time_scale)
    num_blocks = cfg.num_gpu_blocks_override or profile.num_gpu_blocks
    cpu_blocks = int(cfg.kv_offloading_size * 2**30 // latency.kv_block_bytes(cfg.block_size))
    side_host = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost")
    side_port = int(os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600"))
    engine_id = cfg.kv_transfer.engine_id or str(uuid.uuid4())
    probe = BlockHasher(cfg.prefix_caching_hash_algo, cfg.block_size)
    if not probe.reproducible:
        log.warning(
            "block_hashes_not_reproducible",
            algo=cfg.prefix_caching_hash_algo,
            hint="set PYTHONHASHSEED so that routers can compute the same block hashes",
        )
    registry = new_registry()
    metrics = VllmMetrics(
        cfg.model_name,
        cfg.data_parallel_size,
        cfg.max_model_len,
        cache_config={
            "block_size": str(cfg.block_size),
            "num_gpu_blocks": str(num_blocks),
            "num_cpu_blocks": str(cpu_blocks),
            "enable_prefix_caching": str(cfg.enable_prefix_caching),
            "prefix_caching_hash_algo": cfg.prefix_caching_hash_algo,
        },
        max_loras=cfg.max_loras if cfg.enable_lora else None,
    )
    metrics.register(registry)
    runners: list[EngineRunner] = []
    publishers: list[ZmqEventPublisher] = []
    for rank in range(cfg.data_parallel_size):
        core = EngineCore(
            EngineConfig(
                max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                max_model_len=cfg.max_model_len,
                num_gpu_blocks=num_blocks,
                enable_chunked_prefill=cfg.enable_chunked_prefill,
                enable_prefix_caching=cfg.enable_prefix_caching,
                max_loras=cfg.max_loras,
                cpu_offload_blocks=cpu_blocks,
                engine_id=engine_id if rank == 0 else f"{engine_id}_dp{rank}",
                kv_side_channel_host=side_host,
                kv_side_channel_port=side_port + rank,
            ),
            latency,
            BlockHasher(cfg.prefix_caching_hash_algo, cfg.block_size, seed=None),
            enable_kv_events=cfg.kv_events.enabled,
            use_int_hashes=cfg.use_int_block_hashes,
        )
        try:
            publisher = ZmqEventPublisher(cfg.kv_events, rank) if cfg.kv_events.enabled else None
        except ConfigError:
            for p in publishers:  # the ranks already started
                p.close()
            raise
        if publisher is not None:
            publishers.append(publisher)
        runners.append(
            EngineRunner(core, rank, metrics.engines[rank], publisher, lora_info=metrics.lora)
        )
    loras = LoRARegistry(cfg.model_names, cfg.lora_modules, cfg.enable_lora)
    serving = Serving(
        model_names=cfg.model_names,
        tokenizer=tokenizer,
        planner=OutputPlanner(tokenizer, cfg.mode, cfg.seed),
        runners=runners,
        loras=loras,
        max_model_len=cfg.max_model_len,
        kv_transfer_enabled=cfg.kv_transfer.enabled,
    )
    return SimState(
        config=cfg,
        tokenizer=tokenizer,
        serving=serving,
        runners=runners,
        publishers=publishers,
        metrics=metrics,
        registry=registry,
        loras=loras,
        failures=FailureInjector(cfg.failure_rate, cfg.failure_kinds, cfg.seed),
        started=int(time.time()),
    )


def _error(exc: OpenAIError) -> Response:
    return Response(exc.to_json(), status_code=exc.status, media_type="application/json")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(R.dumps(obj), status_code=status, media_type="application/json")


def create_app(state: SimState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for r in state.runners:
            r.start()
        log.info(
            "llmd_sim_ready",
            model=state.config.model_name,
            data_parallel_size=len(state.runners),
            kv_events=[p.bound for p in state.publishers],
            tokenizer=state.tokenizer.name,
        )
        try:
            yield
        finally:
            for r in state.runners:
                await r.stop()
            for p in state.publishers:
                p.close()
            log.info("llmd_sim_stopped")

    app = FastAPI(title="llmd-sim", version=llmd_sim.__version__, lifespan=lifespan)
    app.state.sim = state
    serving = state.serving

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> Response:
        return _error(exc)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left while we read its request (a proxy giving up on a connection): an
        # everyday event, not a server error, and nobody is left to read the answer.
        log.info("client_disconnected", path=request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("request_failed", error=str(exc))
        return Response(
            error_json(500, f"internal error: {type(exc).__name__}"),
            status_code=500,
            media_type="application/json",
        )

    async def _inject(headers: dict[str, str]) -> Response | None:
        kind = state.failures.draw()
        if kind is None:
            return None
        log.info("failure_injected", kind=kind, request_id=headers.get("x-request-id"))
        if kind == "http500":
            return Response(
                error_json(500, "injected failure: internal server error"),
                status_code=500,
                media_type="application/json",
            )
        if kind == "http429":
            return Response(
                error_json(429, "injected failure: too many requests"),
                status_code=429,
                media_type="application/json",
            )
        if kind == "stall":
            await asyncio.sleep(state.config.stall_seconds)
            return Response(
                error_json(504, "injected failure: stalled"),
                status_code=504,
                media_type="application/json",
            )
        sys.stderr.flush()
        os._exit(1)  # "crash": die as an engine process does, without cleanup

    async def _inference(request: Request, chat: bool) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        job = await serving.start(body, headers, chat)
        if state.failures.rate:
            injected = await _inject(headers)
            if injected is not None:
                serving.cancel(job)
                return injected
        if job.streams and job.streams[0].streaming:
            return StreamingResponse(serving.stream(job), media_type="text/event-stream")
        return _json(await serving.complete(job))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _inference(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _inference(request, chat=False)

    @app.get("/v1/models")
    async def models() -> Response:
        cfg = state.config
        cards = [
            R.model_card(name, cfg.model, None, cfg.max_model_len, state.started)
            for name in cfg.model_names
        ]
        for name, lora in state.loras.adapters.items():
            cards.append(
                R.model_card(name, lora.path, state.loras.parents[name], None, state.started)
            )
        return _json({"object": "list", "data": cards})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> Response:
        return _json({"version": llmd_sim.__version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        # The registry holds only VllmMetrics; its renderer writes what generate_latest would.
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return _json(await serving.tokenize(await request.body()))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return _json(serving.detokenize(await request.body()))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Response:
        doc = decode_json(await request.body())
        name, path = doc.get("lora_name"), doc.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise OpenAIError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        state.loras.load(name, path)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> Response:
        doc = decode_json(await request.body())
        name = doc.get("lora_name")
        state.loras.unload(name if isinstance(name, str) else "")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        ok = all([r.reset_prefix_cache() for r in state.runners])
        if not ok:
            log.warning("reset_prefix_cache_refused", reason="blocks are in use")
        return Response(status_code=200)

    @app.get("/server_info")
    async def server_info() -> Response:
        return _json(_server_info(state))

    @app.get("/get_server_info")
    async def get_server_info() -> Response:
        return _json(_server_info(state))

    @app.get("/load")
    async def load() -> Response:
        return _json({"server_load": sum(len(r.streams) for r in state.runners)})

    @app.get("/sim/cache")
    async def sim_cache() -> Response:
        """Simulator-only: each rank's prefix cache, to check KV events against."""
        use_int = state.config.use_int_block_hashes
        out = []
        for r in state.runners:
            kv = r.core.kv

            def ext(h: Any) -> Any:
                return to_external(h, use_int) if isinstance(h, bytes) else h

            out.append(
                {
                    "rank": r.rank,
                    "num_free_blocks": kv.num_free_blocks,
                    "usage": kv.usage,
                    "gpu": [_hash_repr(ext(h)) for h in kv.cached],
                    "gpu_duplicates": kv.num_duplicate_blocks,
                    "cpu": [_hash_repr(ext(h)) for h in kv.cpu],
                    "running": r.core.num_running,
                    "waiting": r.core.num_waiting,
                }
            )
        return _json({"ranks": out})

    return app


def _hash_repr(h: Any) -> Any:
    """A block hash as JSON: hex for digests, the int itself in the int wire form."""
    return h.hex() if isinstance(h, bytes) else h


def _server_info(state: SimState) -> dict[str, Any]:
    cfg = state.config
    tok_path = str(state.tokenizer.path) if state.tokenizer.path else None
    return {
        "model_id": cfg.model_name,
        "model_path": tok_path or cfg.model,
        "served_model_name": cfg.model_name,
        "kv_block_size": cfg.block_size,
        "block_size": cfg.block_size,
        "max_model_len": cfg.max_model_len,
        "data_parallel_size": cfg.data_parallel_size,
        "prefix_caching_hash_algo": cfg.prefix_caching_hash_algo,
        "kv_events_endpoints": [p.bound for p in state.publishers],
        "vllm_config": (
            f"model={cfg.model!r}, served_model_name={cfg.model_name!r}, "
            f"tokenizer={tok_path!r}, block_size={cfg.block_size}, "
            f"max_model_len={cfg.max_model_len}, data_parallel_size={cfg.data_parallel_size}"
        ),
    }


class _Server(uvicorn.Server):
    """uvicorn, but a graceful stop on SIGTERM/SIGINT exits 0 instead of re-raising the signal."""

    stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stop_signal = sig
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    """The ``llmd-sim`` console script."""
    try:
        cfg = parse_args(argv)
        configure_logging("llmd-sim", cfg.log_level, json=cfg.log_format == "json")
        state = build_state(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"llmd-sim: error: {exc}", file=sys.stderr)
        return 2
    app = create_app(state)
    kwargs: dict[str, Any] = {
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 5,
    }
    for opt, mod in (("loop", "uvloop"), ("http", "httptools")):
        with contextlib.suppress(ImportError):
            __import__(mod)
            kwargs[opt] = mod
    try:
        # Bound here rather than by uvicorn, which would log the failure and exit 3: a taken
        # port is a bad flag like any other, one line and exit 2.
        sock = _bind(cfg.host, cfg.port)
    except OSError as exc:
        for p in state.publishers:
            p.close()
        print(f"llmd-sim: error: --port {cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server = _Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, **kwargs))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started or server.stop_signal else 1


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on `host:port`, set up as uvicorn sets up its own."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["SimState", "build_state", "create_app", "main"]
