"""A live vllm-sim drives kvmanager's index to exactly the sim's cache state.

The sim runs as its own process with a small KV cache (so the workload evicts), publishes its KV
events to kvmanager's bound socket under the topic ``kv@<endpoint>@<model>``, with a replay
socket. After a mixed workload (shared prefixes, repeats, concurrent requests, evictions), the
blocks the index holds for the sim's endpoint must equal the sim's own prefix cache, as its
simulator-only ``GET /sim/cache`` reports it (GPU and CPU tiers).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from llmd_kvmanager.config import config_from
from llmd_kvmanager.server import Server
from llmd_sdk.kvcache.hashing import BlockHasher, block_key
from llmd_sdk.kvcache.index import Holder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llmd_sim.server") is None, reason="llmd-sim not on main yet"
    ),
]

MODEL = "llmd-sim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consecutive_free_ports() -> int:
    """p with p + 1 free too: data-parallel rank r uses the configured port + r."""
    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
async def kvmanager(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    dp = int(getattr(request, "param", 1))
    bind_port = consecutive_free_ports()
    cfg = config_from(
        {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "ingest": {"bind": f"tcp://127.0.0.1:{bind_port}", "bind_ranks": dp},
            "models": [{"name": MODEL, "builtin_tokenizer": True}],
        }
    )
    srv = Server(cfg)
    await srv.start()
    yield srv
    await srv.stop(grace=1)


def _keys(raw: list[Any]) -> set[int]:
    """/sim/cache lists hex digests (or ints in the int wire form)."""
    return {block_key(bytes.fromhex(h) if isinstance(h, str) else int(h)) for h in raw}


@pytest.mark.parametrize("kvmanager", [1, 2], indirect=True, ids=["dp1", "dp2"])
async def test_index_matches_the_sims_cache_after_a_mixed_workload(kvmanager: Server) -> None:
    dp = kvmanager.config.ingest.bind_ranks
    port, replay_port = free_port(), consecutive_free_ports()
    endpoint = f"127.0.0.1:{port}"
    bound = kvmanager.manager.subscriber.bound_address
    assert bound is not None
    kvmanager.manager.config.ingest.replay[endpoint] = f"tcp://127.0.0.1:{replay_port}"
    kvmanager.manager.subscriber.config.replay_addresses[endpoint] = (
        f"tcp://127.0.0.1:{replay_port}"
    )
    events = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": bound,
        "replay_endpoint": f"tcp://127.0.0.1:{replay_port}",
        "topic": f"kv@{endpoint}@{MODEL}",
    }
    sim = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "llmd_sim.server", "--model", MODEL, "--host", "127.0.0.1",
         "--port", str(port), "--block-size", "16", "--num-gpu-blocks-override", "48",
         "--kv-offloading-size", "0.02", "--time-scale", "0", "--mode", "echo",
         "--kv-events-config", json.dumps(events), "--log-level", "warning",
         "--data-parallel-size", str(dp)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://{endpoint}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                if sim.returncode is not None:
                    err = await sim.stderr.read() if sim.stderr else b""
                    raise AssertionError(f"llmd-sim exited: {err.decode()[-2000:]}")
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "llmd-sim never became healthy"
                await asyncio.sleep(0.1)

            rng = random.Random(11)
            words = [
                "alpha",
                "beta",
                "gamma",
                "delta",
                "epsilon",
                "zeta",
                "eta",
                "theta",
                "iota",
                "kappa",
                "lambda",
                "mu",
            ]
            systems = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(3)]

            async def complete(prompt: str) -> None:
                r = await http.post(
                    "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 8}
                )
                assert r.status_code == 200, r.text

            # Shared prefixes, repeats and fresh prompts; some concurrently; more distinct
            # blocks than the 48-block GPU cache holds, so the sim evicts (and offloads).
            for round_ in range(6):
                prompts = [
                    rng.choice(systems) + " " + " ".join(rng.choice(words) for _ in range(60))
                    for _ in range(4)
                ]
                if round_ % 2:
                    await asyncio.gather(*(complete(p) for p in prompts))
                else:
                    for p in prompts:
                        await complete(p)
                await complete(systems[round_ % 3])

            async def states() -> tuple[
                dict[tuple[str, int], set[int]], dict[tuple[str, int], set[int]]
            ]:
                """(medium, rank) -> blocks, as the sim reports it and as the index holds it."""
                cache = (await http.get("/sim/cache")).json()
                sim_state: dict[tuple[str, int], set[int]] = {}
                for rank in cache["ranks"]:
                    sim_state[("GPU", rank["rank"])] = _keys(rank["gpu"])
                    sim_state[("CPU", rank["rank"])] = _keys(rank["cpu"])
                held = await kvmanager.manager.index.blocks_of(MODEL, endpoint)
                idx_state = {k: set() for k in sim_state}
                for holder, keys in held.items():
                    assert isinstance(holder, Holder)
                    # without data parallelism the engine sends no rank: it is rank 0
                    idx_state.setdefault((holder.medium, max(holder.rank, 0)), set()).update(keys)
                return sim_state, idx_state

            deadline = time.monotonic() + 10
            while True:
                sim_state, idx_state = await states()
                if sim_state == idx_state:
                    break
                assert time.monotonic() < deadline, {
                    k: (len(v - idx_state.get(k, set())), len(idx_state.get(k, set()) - v))
                    for k, v in sim_state.items()
                }  # (missing, extra) per (medium, rank)
                await asyncio.sleep(0.05)
            for r in range(dp):
                assert sim_state[("GPU", r)], f"rank {r} cached nothing"
            assert any(sim_state[("CPU", r)] for r in range(dp)), "nothing offloaded to CPU"
            removed = kvmanager.manager.metrics.blocks.labels("removed")._value.get()
            assert removed > 0, "the workload evicted nothing: make it bigger"

            # Scoring a prompt end to end (kvmanager's tokenizer and hashing) finds exactly the
            # leading blocks the sim has cached for it (the sim's own tokenization and hashes).
            prompt = systems[2]  # the last request: its prefix is cached
            r = await http.post("/tokenize", json={"model": MODEL, "prompt": prompt})
            ids = r.json()["tokens"]
            prompt_keys = [block_key(d) for d in BlockHasher(block_size=16).hash_tokens(ids)]
            # A prefix is reusable only from one rank: the longest, the lowest rank on a tie.
            best = (0, 0)
            for r in range(dp):
                cached = sim_state[("GPU", r)] | sim_state[("CPU", r)]
                n = 0
                while n < len(prompt_keys) and prompt_keys[n] in cached:
                    n += 1
                best = max(best, (n, -r))
            leading = best[0]
            assert leading > 0
            res = await kvmanager.manager.indexer.score_prompt(MODEL, prompt, [endpoint])
            assert res.prompt_tokens == len(ids)
            assert res.scores[0].matched_blocks == leading
            if dp > 1:
                assert res.scores[0].data_parallel_rank == -best[1]
    finally:
        if sim.returncode is None:
            sim.terminate()
            try:
                await asyncio.wait_for(sim.wait(), 10)
            except TimeoutError:
                sim.kill()
                await sim.wait()
