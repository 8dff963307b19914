"""A router we did not write reads vllm-sim's KV events and routes by them.

Two `llmd-sim` processes publish KV events; `vllm-router` (PyPI, Rust) runs with
``--policy kv_aware`` and one ``--kv-event-source`` (plus replay source) per sim. vllm-router
0.1.17 takes a prompt's token ids from the sims' ``/tokenize`` (its metric
``vllm_router_kv_routing_inputs_total{transport="http",result="tokenize"}``); ``--kv-event-model``
only names the index's model identity. The sims publish under vLLM's default empty topic: the
router's static sources cannot set one and drop batches under any other. Each long prompt is
first sent *directly* to one sim, so the router never sees it and cannot guess from its own
routing history: only the KV events tell it where the prompt's blocks are. The same prompt sent
through the router must then land on that sim, which the response's
``usage.prompt_tokens_details.cached_tokens`` proves (the other sim has never seen the prompt).
Half the prompts are primed on each sim, so routing by luck passes with probability 1/64.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

if importlib.util.find_spec("vllm_router") is None:
    pytest.skip(
        "vllm-router is not installed (PyPI wheels exist for Linux x86_64 only: "
        "`uv sync --all-packages` installs it there)",
        allow_module_level=True,
    )

from llmd_sdk.tokenizer import BUILTIN_TOKENIZER_DIR  # noqa: E402

MODEL = "llmd-sim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()


def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready at {url}:\n{proc.log.read_text()[-3000:]}")


def long_prompt(tag: str) -> str:
    words = [f"{tag}{i}" for i in range(8)]
    return " ".join(f"Paragraph {n} about {words[n % 8]} and routing by prefix." for n in range(60))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    procs: list[Proc] = []
    sims: list[dict[str, Any]] = []
    try:
        for name in ("sim-a", "sim-b"):
            port, pub, replay = free_port(), free_port(), free_port()
            events = (
                '{"enable_kv_cache_events": true, "publisher": "zmq", '
                f'"endpoint": "tcp://*:{pub}", "replay_endpoint": "tcp://*:{replay}"}}'
            )
            argv = [
                sys.executable, "-m", "llmd_sim.server", "--host", "127.0.0.1",
                "--port", str(port), "--time-scale", "0", "--served-model-name", MODEL,
                "--kv-events-config", events, "--log-format", "console",
            ]  # fmt: skip
            p = Proc(name, argv, tmp_path, env)
            procs.append(p)
            sims.append(
                {"url": f"http://127.0.0.1:{port}", "pub": pub, "replay": replay, "proc": p}
            )
        for s in sims:
            wait_http(s["url"] + "/health", s["proc"])
        rport = free_port()
        argv = [
            sys.executable, "-m", "vllm_router.launch_router",
            "--host", "127.0.0.1", "--port", str(rport), "--policy", "kv_aware",
            "--worker-urls", *(s["url"] for s in sims),
            "--kv-event-model", str(BUILTIN_TOKENIZER_DIR), "--kv-event-block-size", "16",
            "--log-level", "debug",
        ]  # fmt: skip
        for s in sims:
            argv += ["--kv-event-source", f"{s['url']}=tcp://127.0.0.1:{s['pub']}"]
            argv += ["--kv-event-replay-source", f"{s['url']}=tcp://127.0.0.1:{s['replay']}"]
        router = Proc("vllm-router", argv, tmp_path, env)
        procs.append(router)
        wait_http(f"http://127.0.0.1:{rport}/health", router)
        yield {"sims": sims, "router": f"http://127.0.0.1:{rport}", "router_proc": router}
    finally:
        for p in procs:
            p.stop()


def _post(client: httpx.Client, url: str, chat: bool, text: str) -> dict[str, Any]:
    if chat:
        body = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": f"{text.split()[3]}: answer briefly."},
                {"role": "user", "content": text},
            ],
            "max_tokens": 2,
        }
        r = client.post(url + "/v1/chat/completions", json=body)
    else:
        r = client.post(
            url + "/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 2}
        )
    assert r.status_code == 200, r.text
    return r.json()


def _cached(resp: dict[str, Any]) -> int:
    return int(resp["usage"]["prompt_tokens_details"]["cached_tokens"])


def wait_router_synced(client: httpx.Client, router: str, sim_url: str, tag: str) -> None:
    """Wait until the router routes by `sim_url`'s events: prime a fresh prompt there, send it
    through the router, and repeat until it comes back as a prefix hit. Events of one sim are
    delivered in order, so everything that sim published before is indexed too."""
    deadline = time.monotonic() + 30
    attempt = 0
    while time.monotonic() < deadline:
        text = long_prompt(f"barrier{tag}{attempt}")
        _post(client, sim_url, False, text)
        if _cached(_post(client, router, False, text)) > 0:
            return
        attempt += 1
        time.sleep(0.2)
    raise AssertionError(f"the router never routed by {sim_url}'s KV events")


def test_repeated_long_prompts_land_on_the_sim_that_holds_them(stack: dict[str, Any]) -> None:
    router = stack["router"]
    sims = [s["url"] for s in stack["sims"]]
    with httpx.Client(timeout=60) as client:
        for i, url in enumerate(sims):
            wait_router_synced(client, router, url, f"s{i}")
        # Prime six prompts directly, alternating sims; half chat, half completions.
        cases = []
        for i in range(6):
            holder = i % 2
            chat = i >= 3
            text = long_prompt(f"doc{i}")
            first = _post(client, sims[holder], chat, text)
            assert _cached(first) == 0
            cases.append((holder, chat, text, first["usage"]["prompt_tokens"]))
        # A last barrier on each sim: once it is routed by events, the six primes are indexed.
        for i, url in enumerate(sims):
            wait_router_synced(client, router, url, f"t{i}")
        before = [_served(client, u) for u in sims]
        for holder, chat, text, n in cases:
            repeat = _post(client, router, chat, text)
            # A prefix hit of every full block but the last token's: the holder served it.
            assert _cached(repeat) == (n - 1) // 16 * 16, (holder, chat)
            assert repeat["usage"]["prompt_tokens"] == n
        after = [_served(client, u) for u in sims]
        assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]
    log = stack["router_proc"].log.read_text()
    assert "credited_prefix_tokens" in log


def _served(client: httpx.Client, url: str) -> float:
    text = client.get(url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
