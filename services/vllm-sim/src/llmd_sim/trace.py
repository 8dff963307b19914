"""Request traces for the discrete-event simulator: a JSONL format and a synthetic generator.

One JSON object per line, in arrival order::

    {"request_id": "r1", "arrival_s": 0.013, "prompt_token_ids": [...], "output_len": 128,
     "lora": null, "prefix_key": "sys-3", "prefix_len": 1024}

``prompt_token_ids`` may be replaced by ``prompt_len`` (synthetic tokens are then drawn from the
request id). ``output_token_ids`` may replace ``output_len`` when a multi-turn trace wants the next
turn's prompt to contain this turn's answer. ``prefix_key``/``prefix_len`` are an optional hint:
requests with the same key share their first ``prefix_len`` tokens, so their block hashes are
computed once.

Traces are iterated lazily: a 100k-request trace never holds every prompt in memory.
"""

from __future__ import annotations

import json
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any


@dataclass(slots=True)
class TraceRequest:
    """One request of a trace (what a router may look at, plus what the engine needs)."""

    request_id: str
    arrival: float
    prompt_token_ids: list[int]
    output_len: int
    output_token_ids: list[int] | None = None
    lora: str | None = None
    prefix_key: str | None = None
    prefix_len: int = 0
    # Filled by the cluster: the prompt's block hashes (for prefix-aware routing).
    block_hashes: list[Any] | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


def _synthetic_tokens(seed: str, n: int, vocab: int) -> list[int]:
    return random.Random(seed).choices(range(vocab), k=n)


def parse_line(line: str, lineno: int = 0) -> TraceRequest:
    where = f"trace line {lineno}" if lineno else "trace"
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: must be a JSON object")
    rid = str(doc.get("request_id") or f"req-{lineno}")
    arrival = doc.get("arrival_s", 0.0)
    if not isinstance(arrival, int | float) or arrival < 0:
        raise ValueError(f"{where}: arrival_s must be a non-negative number")
    prompt = doc.get("prompt_token_ids")
    if prompt is None:
        n = doc.get("prompt_len")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: prompt_token_ids or a positive prompt_len is required")
        prompt = _synthetic_tokens(rid, n, 32000)
    elif not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) for t in prompt):
        raise ValueError(f"{where}: prompt_token_ids must be a non-empty list of integers")
    out_ids = doc.get("output_token_ids")
    out_len = doc.get("output_len", len(out_ids) if isinstance(out_ids, list) else None)
    if not isinstance(out_len, int) or out_len < 1:
        raise ValueError(f"{where}: output_len must be a positive integer")
    return TraceRequest(
        request_id=rid,
        arrival=float(arrival),
        prompt_token_ids=prompt,
        output_len=out_len,
        output_token_ids=out_ids if isinstance(out_ids, list) else None,
        lora=doc.get("lora"),
        prefix_key=doc.get("prefix_key"),
        prefix_len=int(doc.get("prefix_len") or 0),
    )


def read_trace(path: str | Path) -> Iterator[TraceRequest]:
    """Stream a JSONL trace; arrival times must not decrease."""
    last = 0.0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            req = parse_line(line, lineno)
            if req.arrival < last:
                raise ValueError(f"trace line {lineno}: arrival_s goes back in time")
            last = req.arrival
            yield req


def write_trace(requests: Iterator[TraceRequest], out: IO[str]) -> int:
    n = 0
    for r in requests:
        doc: dict[str, Any] = {
            "request_id": r.request_id,
            "arrival_s": round(r.arrival, 6),
            "prompt_token_ids": r.prompt_token_ids,
            "output_len": r.output_len,
        }
        if r.lora:
            doc["lora"] = r.lora
        if r.prefix_key:
            doc["prefix_key"], doc["prefix_len"] = r.prefix_key, r.prefix_len
        out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class SyntheticWorkload:
    """Poisson arrivals; prompts = one of `num_prefixes` shared prefixes + a unique suffix."""

    num_requests: int = 1000
    rate_per_s: float = 100.0
    num_prefixes: int = 32
    prefix_len: int = 1024
    suffix_len: tuple[int, int] = (32, 256)
    output_len: tuple[int, int] = (32, 256)
    prefix_skew: float = 1.2
    vocab_size: int = 32000
    seed: int = 0

    def __iter__(self) -> Iterator[TraceRequest]:
        rng = random.Random(self.seed)
        prefixes = [
            _synthetic_tokens(f"{self.seed}-prefix-{i}", self.prefix_len, self.vocab_size)
            for i in range(self.num_prefixes)
        ]
        # Zipf-like popularity: a few system prompts carry most traffic.
        weights = [1.0 / (i + 1) ** self.prefix_skew for i in range(self.num_prefixes)]
        # `rng.choices(groups, weights)[0]` made cheap: the same cumulative weights and the same
        # single draw that `Random.choices` makes, computed once instead of per request.
        cum_weights = list(accumulate(weights))
        total = cum_weights[-1] + 0.0 if cum_weights else 0.0
        last_group = self.num_prefixes - 1
        draw = rng.random
        t = 0.0
        lo, hi = self.suffix_len
        olo, ohi = self.output_len
        # Suffixes are slices of one random pool at random offsets: unique in practice, and
        # generated at C speed (a 100k-request trace would otherwise spend seconds in randrange).
        pool = _synthetic_tokens(f"{self.seed}-pool", 1 << 17, self.vocab_size)
        span = len(pool) - hi
        groups = range(self.num_prefixes)
        for i in range(self.num_requests):
            t += rng.expovariate(self.rate_per_s)
            g = (
                groups[bisect(cum_weights, draw() * total, 0, last_group)]
                if self.num_prefixes
                else -1
            )
            off = rng.randrange(span)
            suffix = pool[off : off + rng.randint(lo, hi)]
            prompt = (prefixes[g] + suffix) if g >= 0 else suffix
            yield TraceRequest(
                request_id=f"r{i}",
                arrival=t,
                prompt_token_ids=prompt,
                output_len=rng.randint(olo, ohi),
                prefix_key=f"p{g}" if g >= 0 else None,
                prefix_len=self.prefix_len if g >= 0 else 0,
            )
