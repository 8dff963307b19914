"""The request checks of the local e2e suite, through Istio on a kind cluster.

`run.sh up` creates the cluster, builds and loads the images and applies
`deploy/kustomize/overlays/kind/inference-scheduling` (the CPU overlay with vllm-sim engines);
the tests then talk to the Istio gateway through a port-forward. Skipped, with the reason, where
Docker, kind, kubectl or istioctl is missing. LLMD_KIND_KEEP=1 keeps the cluster afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmd.local import free_port

pytestmark = [pytest.mark.kind, pytest.mark.e2e]

HERE = Path(__file__).resolve().parent
MODEL = "Qwen/Qwen3-0.6B"


def _missing() -> str | None:
    tools = [t for t in ("docker", "kind", "kubectl", "istioctl") if shutil.which(t) is None]
    if tools:
        return f"needs {', '.join(tools)} on PATH (not installed here)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "needs a Docker engine (docker info fails here)"
    return None


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    script = str(HERE / "run.sh")
    subprocess.run([script, "up"], check=True, timeout=1800)
    port = free_port()
    fwd = subprocess.Popen(
        [script, "forward"],
        env={**os.environ, "LLMD_KIND_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
                if httpx.post(f"{url}/v1/completions", json=body, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the Istio gateway did not answer through the port-forward")
            time.sleep(1)
        yield url
    finally:
        fwd.terminate()
        fwd.wait(10)
        if os.environ.get("LLMD_KIND_KEEP") != "1":
            subprocess.run([script, "down"], timeout=300)


def test_chat_and_completion(gateway: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = httpx.post(f"{gateway}/v1/chat/completions", json=chat, timeout=60)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 3}
    resp = httpx.post(f"{gateway}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]


def test_streaming(gateway: str) -> None:
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", json=chat, timeout=60) as resp:
        assert resp.status_code == 200
        events = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"


def test_prefix_affinity(gateway: str) -> None:
    system = f"[{time.time_ns()}] " + "You are a careful assistant. " * 60

    def cached(i: int) -> int:
        chat = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {i}"},
            ],
            "max_tokens": 2,
        }
        resp = httpx.post(f"{gateway}/v1/chat/completions", json=chat, timeout=60)
        assert resp.status_code == 200
        return int(resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached(0) == 0
    # KV events travel engine -> kvmanager asynchronously: once the EPP knows where the prefix
    # is, every later request sharing it lands there.
    deadline = time.monotonic() + 30
    i = 1
    while cached(i) == 0:
        assert time.monotonic() < deadline, "no request was routed to the cached prefix"
        i += 1
    assert all(cached(i + k) > 0 for k in range(1, 5))


def test_errors(gateway: str) -> None:
    resp = httpx.post(
        f"{gateway}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400 and resp.json()["error"]["message"]
    chat = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(f"{gateway}/v1/chat/completions", json=chat, timeout=30)
    assert resp.status_code == 404
