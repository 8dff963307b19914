"""`inference-perf` as the bench's load driver (`llmd bench --driver inference-perf`).

inference-perf (kubernetes-sigs, PyPI `inference-perf`, Python >= 3.12) is the load generator
of the Gateway API Inference Extension's benchmarks. It runs as its own program, from its own
Python 3.12 environment: found on PATH as `inference-perf`, or named with `--inference-perf`.

Each (router, rate) cell runs it once against the router's URL with its `shared_prefix`
generator set to the bench's workload shape: the same number of groups and users per group,
system prompts and questions of the same length in tokens (measured with the SDK's built-in
tokenizer, which inference-perf also loads, from its directory), the same output length and
seed, Poisson arrivals at the cell's rate for as long as the trace's number of requests takes.
Each user's prompt (its group's system prompt and its question) is sent `turns` times on
average, the users in turn, as inference-perf cycles through its prompts.

Not its multi-turn mode: there each round appends the whole prompt, system prompt included, to
the session's history, so a session's prompts grow by a system prompt per turn (measured: 14.4k
tokens per request on average against the trace's 7.7k, and every router overloaded at 8
req/s; `benchmarks/data/routing/dec07-inference-perf-multiturn`). The prompts are
inference-perf's own random text, not the bench's seeded trace, and histories do not grow: the
two drivers are comparable in shape, not request for request. inference-perf's per-request
records (`per_request_lifecycle_metrics.json`) become the bench's `Result`s, so the report, the
targets and the plots are the same for either driver.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from llmd.bench.client import Result
from llmd.bench.workload import WorkloadSpec, build_trace

EXECUTABLE = "inference-perf"
PER_REQUEST_FILE = "per_request_lifecycle_metrics.json"
_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")


class InferencePerfError(RuntimeError):
    """inference-perf is missing, failed, or wrote nothing usable; the message is one line."""


def find_executable(explicit: str | None = None) -> str:
    """The inference-perf program: `explicit` if given, else the one on PATH."""
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InferencePerfError(f"--inference-perf: {explicit} is not an executable file")
        return str(path)
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise InferencePerfError(
            "--driver inference-perf: no `inference-perf` on PATH (install it into a Python "
            "3.12 environment, `pip install inference-perf`, or pass --inference-perf PATH)"
        )
    return found


def token_lengths(spec: WorkloadSpec) -> tuple[int, int]:
    """Tokens of the workload's system prompt and of one question (the built-in tokenizer)."""
    from llmd_sdk.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    first = build_trace(spec, 1.0)[0]
    system, question = first.messages[0]["content"], first.messages[1]["content"]
    return (
        len(tok.encode(system, add_special_tokens=False)),
        len(tok.encode(question, add_special_tokens=False)),
    )


def config_for(
    url: str,
    model: str,
    spec: WorkloadSpec,
    rate_rps: float,
    *,
    time_scale: float,
    lengths: tuple[int, int],
    out_dir: Path,
) -> dict[str, Any]:
    """The inference-perf config of one cell. `rate_rps` is in model time, like the bench's
    rates: the engines run `time_scale` times faster than a GPU, so the real rate is divided
    by it (and the duration multiplied)."""
    from llmd_sdk.tokenizer import BUILTIN_TOKENIZER_DIR

    if rate_rps <= 0:
        raise ValueError("rate_rps: must be positive")
    scale = time_scale if time_scale > 0 else 1.0
    real_rate = rate_rps / scale
    system_tokens, question_tokens = lengths
    return {
        "load": {
            "type": "poisson",
            # Whole seconds (inference-perf's stage duration is an integer): at least the
            # trace's number of requests.
            "stages": [
                {"rate": real_rate, "duration": max(1, math.ceil(spec.requests / real_rate))}
            ],
            # One worker process (the default is one per CPU, which competes with the routers
            # and engines on a small machine), and no cap on requests in flight that an
            # overloaded router could reach: arrivals stay open-loop, as the builtin driver's.
            "num_workers": 1,
            "worker_max_concurrency": 4096,
        },
        "api": {"type": "completion", "streaming": True},
        "server": {"type": "vllm", "model_name": model, "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(BUILTIN_TOKENIZER_DIR)},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": spec.groups,
                "num_prompts_per_group": spec.users_per_group,
                "system_prompt_len": system_tokens,
                "question_len": question_tokens,
                "output_len": spec.output_tokens,
                "seed": spec.seed,
                # Single-turn: see the module docstring for why not its multi-turn mode.
                "enable_multi_turn_chat": False,
            },
        },
        "report": {"request_lifecycle": {"summary": True, "per_stage": False, "per_request": True}},
        "storage": {"local_storage": {"path": str(out_dir)}},
    }


def results_from(records: list[dict[str, Any]]) -> tuple[list[Result], float]:
    """The bench's `Result`s from inference-perf's per-request records, times relative to the
    first request's start; and the wall time from that start to the last end."""
    if not records:
        raise InferencePerfError(f"inference-perf: {PER_REQUEST_FILE} holds no requests")
    t0 = min(float(r["start_time"]) for r in records)
    out: list[Result] = []
    for i, rec in enumerate(records):
        info = rec.get("info") or {}
        extra = info.get("extra_info") or {}
        session, rnd = extra.get("user_session"), extra.get("chat_round")
        rid = f"{session}-r{rnd}" if session is not None else f"request-{i}"
        start = float(rec["start_time"]) - t0
        res = Result(rid, scheduled_s=start, sent_s=start, end_s=float(rec["end_time"]) - t0)
        response = info.get("response_metrics") or {}
        times = [float(t) - t0 for t in response.get("chunk_times") or ()]
        res.chunk_times = times
        res.first_token_s = times[0] if times else None
        usage = response.get("server_usage") or {}
        res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        res.output_tokens = int(
            usage.get("completion_tokens") or response.get("output_tokens") or 0
        )
        res.cached_tokens = int(
            (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        )
        error = rec.get("error")
        if error:
            # {"error_type": "HTTP Error 503" or an exception's name, "error_msg": ...}
            kind = str(error.get("error_type", "")) if isinstance(error, dict) else ""
            msg = str(error.get("error_msg", "")) if isinstance(error, dict) else str(error)
            match = _HTTP_ERROR.fullmatch(kind)
            res.status = int(match.group(1)) if match else 0
            res.error = f"{kind or 'error'}: {msg}"[:300]
        else:
            res.status = 200
        out.append(res)
    wall = max((r.end_s or 0.0) for r in out)
    return out, wall


class InferencePerfDriver:
    """Runs one cell's load through inference-perf and reads its per-request records back."""

    def __init__(
        self, executable: str, spec: WorkloadSpec, *, model: str, time_scale: float
    ) -> None:
        self.executable = executable
        self.spec = spec
        self.model = model
        self.time_scale = time_scale
        self.lengths = token_lengths(spec)

    async def run(
        self, url: str, rate_rps: float, workdir: Path, timeout_s: float = 1800.0
    ) -> tuple[list[Result], float]:
        import yaml

        out_dir = workdir / "inference-perf"
        out_dir.mkdir(parents=True, exist_ok=True)
        config = config_for(
            url,
            self.model,
            self.spec,
            rate_rps,
            time_scale=self.time_scale,
            lengths=self.lengths,
            out_dir=out_dir,
        )
        config_file = workdir / "inference-perf.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        log_file = workdir / "inference-perf.log"
        # Nothing to download: the tokenizer is a local directory.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with log_file.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                self.executable,
                "--config_file",
                str(config_file),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise InferencePerfError(
                    f"inference-perf: still running after {timeout_s:g}s (log: {log_file})"
                ) from None
        if code != 0:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise InferencePerfError(
                f"inference-perf exited with {code}: {tail[0][:200]} (log: {log_file})"
            )
        found = sorted(out_dir.rglob(PER_REQUEST_FILE))
        if not found:
            raise InferencePerfError(f"inference-perf wrote no {PER_REQUEST_FILE} under {out_dir}")
        return results_from(json.loads(found[-1].read_text()))
