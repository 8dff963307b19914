"""KV-block index: event ingest rate and prefix-score latency, for both backends.

Ingest: a publisher *process* sends vLLM-format KV-event batches over ZMQ (tcp loopback) as fast
as it can; this process runs the SDK's `KVEventSubscriber` on one core and reports applied block
events per second. Baseline in the same run: the same subscriber with an index that does nothing
(socket + framing + msgspec decode + applier), so the ratio shows what the index itself costs.

Score: 64 endpoints hold overlapping prefixes of 8k-token prompts (a shared system prefix on every
endpoint, per-family prefixes of random lengths, some blocks on CPU). Latency p50/p99 of one score
call (hash -> lookup -> longest-prefix scores for all 64 endpoints), for:

- tokens, seen:        token ids of a prompt scored before (block-key cache hits);
- tokens, new suffix:  the shared prefix is known, the rest of the prompt is new;
- tokens, uncached:    block-key cache disabled: every block hashed (vLLM's sha256 over pickle);
- text, repeat:        a prompt text seen before (token cache hit, then as "tokens, seen");
- text, new:           a new prompt text: tokenized with the model's tokenizer, then hashed.

Baseline: `BlockHasher.hash_tokens` of the same 8k tokens (what the engine itself pays to hash).

    uv run --no-sync python benchmarks/kvindex.py [--smoke] [--out result.json] [--backends memory,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import free_port, machine, percentile, table, write_json
from llmd_sdk.kvcache.applier import PublisherKey
from llmd_sdk.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    encode_batch,
)
from llmd_sdk.kvcache.hashing import BlockHasher, block_key
from llmd_sdk.kvcache.index import (
    ClearEndpoint,
    Holder,
    HolderSet,
    IndexOp,
    IndexStats,
    InMemoryIndex,
    KVBlockIndex,
    StoreBlocks,
)
from llmd_sdk.kvcache.indexer import PrefixCacheIndexer
from llmd_sdk.kvcache.request_keys import RequestKeyer, Tokenizer
from llmd_sdk.kvcache.subscriber import KVEventSubscriber, SubscriberConfig

MODEL = "bench-model"
ENDPOINT = "10.0.0.1:8000"

# -- ingest --------------------------------------------------------------------------------------


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def _batches(n: int, events: int, blocks: int, seed: int) -> list[bytes]:
    """Engine-like batches: mostly stores of new blocks, some removals of older ones."""
    rng = random.Random(seed)
    out: list[bytes] = []
    live: list[bytes] = []
    for _ in range(n):
        evs: list[BlockStored | BlockRemoved | AllBlocksCleared] = []
        for e in range(events):
            if e % 4 == 3 and len(live) >= blocks:
                gone, live = live[:blocks], live[blocks:]
                evs.append(BlockRemoved(block_hashes=list(gone), medium="GPU"))
                continue
            hashes = [rng.randbytes(32) for _ in range(blocks)]
            live.extend(hashes)
            evs.append(
                BlockStored(
                    block_hashes=list(hashes),
                    parent_block_hash=None,
                    token_ids=[rng.randrange(32_000) for _ in range(16 * blocks)],
                    block_size=16,
                    lora_id=None,
                    medium="GPU",
                    lora_name=None,
                )
            )
        out.append(encode_batch(KVEventBatch(ts=time.time(), events=evs)))
    return out


def publisher_main(address: str, n: int, events: int, blocks: int, conn: Connection) -> None:
    """Child process: connect, probe until told to go, send every batch, report the send time."""
    import zmq
    from llmd_sdk.kvcache.events import encode_seq

    _pin(1)
    payloads = _batches(n, events, blocks, seed=7)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(address)
    topic = f"kv@{ENDPOINT}@{MODEL}".encode()
    probe = encode_batch(KVEventBatch(ts=time.time(), events=[]))
    seq = 0
    conn.send("built")
    while not conn.poll(0.01):
        pub.send_multipart((topic, encode_seq(seq), probe))
        seq += 1
    assert conn.recv() == "go"
    t0 = time.perf_counter()
    for p in payloads:
        pub.send_multipart((topic, encode_seq(seq), p), copy=False)
        seq += 1
    conn.send(time.perf_counter() - t0)
    conn.recv()  # parent done: closing earlier could drop queued messages
    pub.close(linger=0)
    ctx.term()


class NullIndex(KVBlockIndex):
    """Baseline: accepts every operation and keeps nothing."""

    async def apply(self, ops: Sequence[IndexOp]) -> None:
        return None

    async def lookup(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        return []

    async def endpoints(self, model: str | None = None) -> list[str]:
        return []

    async def blocks_of(self, model: str, endpoint: str) -> dict[Holder, set[int]]:
        return {}

    async def stats(self) -> IndexStats:
        return IndexStats(0, 0)


class _Count:
    def __init__(self) -> None:
        self.blocks = 0
        self.first = 0.0
        self.last = 0.0

    def batch(self, key: PublisherKey, batch: KVEventBatch, ops: list[IndexOp]) -> None:
        n = sum(len(op.keys) for op in ops if not isinstance(op, ClearEndpoint))
        if n:
            now = time.perf_counter()
            if not self.blocks:
                self.first = now
            self.blocks += n
            self.last = now

    def malformed(self, reason: str) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass

    def gap(self, key: PublisherKey, missing: int, replayed: bool) -> None:
        pass

    def resync(self, key: PublisherKey, reason: str) -> None:
        pass


async def bench_ingest(
    name: str, index: KVBlockIndex, n: int, events: int, blocks: int
) -> dict[str, Any]:
    count = _Count()
    sub = KVEventSubscriber(
        index,
        SubscriberConfig(bind="tcp://127.0.0.1:0", rcvhwm=0, queue_size=n + 1000),
        observer=count,
    )
    await sub.start()
    assert sub.bound_address is not None
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=publisher_main, args=(sub.bound_address, n, events, blocks, child), daemon=True
    )
    proc.start()
    try:
        # The child builds its batches first.
        if not await asyncio.to_thread(parent.poll, 300):
            raise RuntimeError("publisher never got ready")
        assert parent.recv() == "built"
        deadline = time.monotonic() + 30
        while sub.counters.batches == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("publisher never connected")
            await asyncio.sleep(0.01)
        expected = n * events * blocks
        c0, t0 = time.process_time(), time.perf_counter()
        parent.send("go")
        deadline = time.monotonic() + 600
        while count.blocks < expected:
            if time.monotonic() > deadline or (sub.counters.gaps and not sub.counters.batches):
                break
            await asyncio.sleep(0.002)
        t1, c1 = time.perf_counter(), time.process_time()
        send_s = parent.recv() if parent.poll(10) else float("nan")
        parent.send("done")
        applied = count.blocks
        wall = t1 - t0
        stats = await index.stats()
        return {
            "subject": name,
            "batches": n,
            "block_events": applied,
            "expected_block_events": expected,
            "seconds": wall,
            "block_events_per_s": applied / wall if wall > 0 else float("nan"),
            # per CPU second of this process (event loop + ZMQ I/O thread): the cost, whatever
            # else the machine is doing
            "block_events_per_cpu_s": applied / (c1 - c0) if c1 > c0 else float("nan"),
            "publisher_send_s": send_s,
            "publisher_block_events_per_s": expected / send_s if send_s else float("nan"),
            "gaps": sub.counters.gaps,
            "dropped": sum(sub.counters.dropped.values()),
            "index_keys": stats.keys,
        }
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        await sub.stop()


# -- score ---------------------------------------------------------------------------------------


def load_bench_tokenizer() -> tuple[Tokenizer, str]:
    """The SDK's built-in tokenizer when this SDK has it, else an 8192-id byte-level BPE trained
    here on a fixed corpus (same size and kind as the built-in one)."""
    try:
        from llmd_sdk.tokenizer import load_tokenizer  # type: ignore[import-not-found,unused-ignore]

        tok: Tokenizer = load_tokenizer(None)
        return tok, "llmd_sdk.tokenizer built-in (byte-level BPE, 8192 ids)"
    except ImportError:
        pass
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]  # fmt: skip
    corpus = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(500)]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=8192,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )

    class _Adapter:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return hf.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

        def apply_chat_template(self, messages: Any) -> str:
            return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)

    return _Adapter(), "byte-level BPE, 8192 ids, trained in-process"


def _text(rng: random.Random, words: list[str], n_words: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n_words))


def _text_of_tokens(tok: Tokenizer, rng: random.Random, words: list[str], tokens: int) -> str:
    """Random words whose tokenization is `tokens` long, give or take a word."""
    chosen = [rng.choice(words) for _ in range(tokens)]  # more words than needed
    lo, hi = 1, len(chosen)
    while lo < hi:  # the fewest words reaching `tokens`
        mid = (lo + hi) // 2
        if len(tok.encode(" ".join(chosen[:mid]), add_special_tokens=False)) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    return " ".join(chosen[:lo])


def _populate(
    n_endpoints: int, families: list[list[int]], shared_blocks: int, hasher: BlockHasher, seed: int
) -> list[tuple[str, list[StoreBlocks]]]:
    """Per endpoint: the shared prefix on GPU, 2-3 families' prefixes of random lengths, the tail
    of some of them offloaded to CPU."""
    rng = random.Random(seed)
    keys = [[block_key(d) for d in hasher.hash_tokens(f)] for f in families]
    out = []
    for i in range(n_endpoints):
        ep = f"10.0.{i // 250}.{i % 250 + 1}:8000"
        ops = [StoreBlocks(MODEL, Holder(ep, "GPU"), keys[0][:shared_blocks])]
        for f in rng.sample(range(len(families)), k=min(len(families), rng.choice((2, 3)))):
            n = rng.randrange(shared_blocks, len(keys[f]) + 1)
            cpu_from = rng.randrange(shared_blocks, n + 1)
            ops.append(StoreBlocks(MODEL, Holder(ep, "GPU"), keys[f][:cpu_from]))
            if cpu_from < n:
                ops.append(StoreBlocks(MODEL, Holder(ep, "CPU"), keys[f][cpu_from:n]))
        out.append((ep, ops))
    return out


async def _time(calls: Iterator[Any], n: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (this thread) seconds of `n` calls."""
    lat, cpu = [], []
    for _ in range(n):
        coro = next(calls)
        c0, t0 = time.thread_time(), time.perf_counter()
        await coro
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return lat, cpu


def _row(subject: str, timed: tuple[list[float], list[float]]) -> dict[str, Any]:
    lat, cpu = timed
    return {
        "subject": subject,
        "calls": len(lat),
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
        "cpu_p50_ms": percentile(cpu, 50) * 1e3,
        "cpu_p99_ms": percentile(cpu, 99) * 1e3,
    }


async def bench_score(
    backend: str,
    index: KVBlockIndex,
    tok: Tokenizer,
    n_endpoints: int,
    prompt_tokens: int,
    iters: int,
) -> list[dict[str, Any]]:
    hasher = BlockHasher("sha256", 16)
    rng = random.Random(3)
    words = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                    for _ in range(5000)})  # fmt: skip
    system = _text_of_tokens(tok, rng, words, 1024)
    shared_ids = tok.encode(system)[:1024]
    shared_blocks = len(shared_ids) // 16

    def prompt_ids() -> list[int]:
        ids = shared_ids + [rng.randrange(8000) for _ in range(prompt_tokens - len(shared_ids))]
        return ids[:prompt_tokens]

    families = [prompt_ids() for _ in range(8)]
    for _, ops in _populate(n_endpoints, families, shared_blocks, hasher, seed=5):
        await index.apply(ops)
    endpoints = await index.endpoints(MODEL)
    keyer = RequestKeyer(hasher, tok)
    indexer = PrefixCacheIndexer(index, {MODEL: keyer})
    rows: list[dict[str, Any]] = []

    # Check the scores are real: the family prompt matches its longest holder exactly.
    res = await indexer.score_tokens(MODEL, families[0], endpoints)
    best = max(s.matched_blocks for s in res.scores)
    assert res.total_blocks == prompt_tokens // 16 and best >= shared_blocks, (
        res.total_blocks,
        best,
    )

    for f in families:  # warm the block-key cache
        await indexer.score_tokens(MODEL, f, endpoints)
    seen = iter(lambda: indexer.score_tokens(MODEL, rng.choice(families), endpoints), None)
    rows.append(_row(f"{backend}: tokens, seen", await _time(seen, iters)))

    fresh = [prompt_ids() for _ in range(iters)]
    it = iter(fresh)
    new_suffix = iter(lambda: indexer.score_tokens(MODEL, next(it), endpoints), None)
    rows.append(_row(f"{backend}: tokens, new suffix", await _time(new_suffix, iters)))

    cold = PrefixCacheIndexer(index, {MODEL: RequestKeyer(hasher, tok, block_cache_capacity=2)})
    uncached = iter(lambda: cold.score_tokens(MODEL, rng.choice(families), endpoints), None)
    rows.append(_row(f"{backend}: tokens, uncached", await _time(uncached, iters)))

    base_text = _text_of_tokens(tok, rng, words, prompt_tokens - 1024)
    texts = [system + " " + base_text[: len(base_text) - i] for i in range(8)]
    for t in texts:
        await indexer.score_prompt(MODEL, t, endpoints)
    repeat = iter(lambda: indexer.score_prompt(MODEL, rng.choice(texts), endpoints), None)
    rows.append(_row(f"{backend}: text, repeat", await _time(repeat, iters)))

    new_texts = [system + " " + _text_of_tokens(tok, rng, words, prompt_tokens - 1024)
                 for _ in range(max(4, iters // 4))]  # fmt: skip
    nt = iter(new_texts)
    fresh_text = iter(lambda: indexer.score_prompt(MODEL, next(nt), endpoints), None)
    rows.append(_row(f"{backend}: text, new", await _time(fresh_text, len(new_texts))))

    res = await indexer.score_prompt(MODEL, new_texts[0], endpoints)
    rows[-1]["prompt_tokens"] = res.prompt_tokens
    return rows


def bench_hash_baseline(prompt_tokens: int, iters: int) -> dict[str, Any]:
    hasher = BlockHasher("sha256", 16)
    rng = random.Random(9)
    lat, cpu = [], []
    for _ in range(iters):
        ids = [rng.randrange(8000) for _ in range(prompt_tokens)]
        c0, t0 = time.thread_time(), time.perf_counter()
        hasher.hash_tokens(ids)
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return _row("baseline: vLLM block hashing (sha256)", (lat, cpu))


# -- redis ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(__import__("tempfile").TemporaryDirectory())
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def make_index(backend: str, url: str | None) -> KVBlockIndex:
    if backend == "memory":
        mem = InMemoryIndex(capacity=2_000_000)
        gc.collect()
        gc.freeze()  # as kvmanager does after start-up (see InMemoryIndex's docstring)
        return mem
    from llmd_sdk.kvcache.index.redis import RedisIndex

    assert url is not None
    red = await RedisIndex(url).connect()
    await red._r.flushdb()
    return red


# -- main ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.smoke
    n_batches = 200 if smoke else args.batches
    events, blocks = args.events_per_batch, args.blocks_per_event
    n_endpoints = 8 if smoke else args.endpoints
    prompt_tokens = 1024 + 512 if smoke else args.prompt_tokens
    iters = 20 if smoke else args.iters
    backends = [b for b in args.backends.split(",") if b]
    _pin(0)

    tok, tok_name = load_bench_tokenizer()
    out: dict[str, Any] = {
        "machine": machine(),
        "smoke": smoke,
        "tokenizer": tok_name,
        "ingest": [],
        "score": [],
        "params": {
            "batches": n_batches,
            "events_per_batch": events,
            "blocks_per_event": blocks,
            "endpoints": n_endpoints,
            "prompt_tokens": prompt_tokens,
            "iters": iters,
        },
    }
    with redis_server() as url:
        if "redis" in backends and url is None:
            print("redis-server not installed: skipping the redis backend", file=sys.stderr)
            backends = [b for b in backends if b != "redis"]
        out["ingest"].append(
            await bench_ingest("baseline: null index", NullIndex(), n_batches, events, blocks)
        )
        for b in backends:
            idx = await make_index(b, url)
            # Redis ingest is bounded by round trips: fewer batches keep the run short.
            nb = n_batches if b == "memory" else max(50, n_batches // 10)
            out["ingest"].append(await bench_ingest(b, idx, nb, events, blocks))
            await idx.aclose()
        out["score"].append(bench_hash_baseline(prompt_tokens, iters))
        for b in backends:
            idx = await make_index(b, url)
            out["score"].extend(await bench_score(b, idx, tok, n_endpoints, prompt_tokens, iters))
            await idx.aclose()
    base_ingest = out["ingest"][0]["block_events_per_s"]
    for r in out["ingest"]:
        r["ratio_to_baseline"] = r["block_events_per_s"] / base_ingest
        r["load_avg_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    base_p99 = out["score"][0]["p99_ms"]
    for r in out["score"]:
        r["p99_ratio_to_hashing"] = r["p99_ms"] / base_p99
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="a few seconds, tiny sizes (CI)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--backends", default="memory,redis")
    p.add_argument("--batches", type=int, default=4000)
    p.add_argument("--events-per-batch", type=int, default=8)
    p.add_argument("--blocks-per-event", type=int, default=16)
    p.add_argument("--endpoints", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=8192)
    p.add_argument("--iters", type=int, default=300)
    args = p.parse_args(argv)
    out = asyncio.run(run(args))
    print(f"tokenizer: {out['tokenizer']}")
    print("\ningest (block events applied per second, one core)")
    print(table(out["ingest"], ["subject", "block_events", "seconds", "block_events_per_s",
                                "block_events_per_cpu_s", "ratio_to_baseline", "gaps"]))  # fmt: skip
    print(f"\nscore latency: {out['params']['prompt_tokens']}-token prompt, "
          f"{out['params']['endpoints']} endpoints")  # fmt: skip
    print(table(out["score"], ["subject", "calls", "p50_ms", "p99_ms", "max_ms", "cpu_p50_ms",
                               "cpu_p99_ms", "p99_ratio_to_hashing"]))  # fmt: skip
    print("cpu_*: CPU time of the scoring thread (for redis it leaves out the server's work)")
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
