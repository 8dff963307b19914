"""Prefix affinity: requests sharing a system prompt land on the replica that caches it."""

from __future__ import annotations

import uuid

import grpc
import httpx
import pytest
from e2e_helpers import RunningStack, wait_for
from llmd_sdk.contracts import kvindex, kvindex_grpc

pytestmark = pytest.mark.e2e

QWEN = "Qwen/Qwen3-0.6B"


def system_prompt() -> str:
    # Unique per run, so no replica holds it from an earlier test.
    salt = uuid.uuid4().hex
    return f"[{salt}] You are a meticulous assistant for a ski resort. " + " ".join(
        f"Rule {i}: answer politely, cite the trail map, and keep it short." for i in range(40)
    )


def messages(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def holders(stack: RunningStack, system: str) -> dict[str, int]:
    """kvmanager's view: matched leading blocks of this prompt, per qwen3 replica."""
    cfg = stack.stack.config
    req = kvindex.ScoreRequest(model=QWEN)
    for m in messages(system, "anything"):
        req.chat.messages.add(role=m["role"], content=m["content"])

    async def score() -> dict[str, int]:
        async with grpc.aio.insecure_channel(f"{cfg.host}:{cfg.kvmanager.grpc_port}") as ch:
            resp = await kvindex_grpc.KVIndexStub(ch).Score(req, timeout=5)
        return {s.endpoint: s.matched_blocks for s in resp.scores if s.matched_blocks}

    result: dict[str, int] = stack.call(score())
    return result


def test_a_shared_system_prompt_is_served_where_it_is_cached(
    stack: RunningStack, client: httpx.Client
) -> None:
    system = system_prompt()
    first = client.post(
        "/v1/chat/completions",
        json={"model": QWEN, "messages": messages(system, "Is it open?"), "max_tokens": 4},
    )
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    prompt_tokens = usage["prompt_tokens"]

    # The engine's KV events reach kvmanager: exactly one replica holds the prompt.
    held = wait_for(lambda: holders(stack, system), 10, "kvmanager to learn the prefix")
    assert len(held) == 1
    (owner,) = held

    before = {
        r.endpoint: stack.metric_sum(r.endpoint, "vllm:request_success_total")
        for r in stack.replicas("qwen3")
    }
    for i in range(6):
        resp = client.post(
            "/v1/chat/completions",
            json={"model": QWEN, "messages": messages(system, f"Question {i}?"), "max_tokens": 4},
        )
        assert resp.status_code == 200, resp.text
        cached = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        # All full blocks of the shared part come from the cache.
        assert cached >= (prompt_tokens - 32) // 16 * 16, (i, cached, prompt_tokens)
    after = {
        r.endpoint: stack.metric_sum(r.endpoint, "vllm:request_success_total")
        for r in stack.replicas("qwen3")
    }
    assert after[owner] - before[owner] == 6
    assert all(after[e] == before[e] for e in after if e != owner)


def test_an_unrelated_prompt_hits_no_cache(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/chat/completions",
        json={"model": QWEN, "messages": messages(system_prompt(), "Hi"), "max_tokens": 2},
    )
    assert resp.status_code == 200
    assert resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
