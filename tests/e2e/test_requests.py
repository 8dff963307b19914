"""Requests through the whole local stack: gateway -> BBR -> the model's EPP -> an engine."""

from __future__ import annotations

import json

import httpx
import pytest
from e2e_helpers import RunningStack

pytestmark = pytest.mark.e2e

QWEN, LLAMA, ADAPTER = "Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B-Instruct", "ski-resorts"


def chat(model: str, text: str = "Say something.", **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        **extra,
    }


def sse_events(resp: httpx.Response) -> list[str]:
    assert resp.headers["content-type"].startswith("text/event-stream")
    return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]


def successes(stack: RunningStack) -> dict[str, float]:
    return {
        r.endpoint: stack.metric_sum(r.endpoint, "vllm:request_success_total")
        for r in stack.replicas()
    }


def test_chat_completion(client: httpx.Client) -> None:
    resp = client.post("/v1/chat/completions", json=chat(QWEN))
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["object"] == "chat.completion" and doc["model"] == QWEN
    assert doc["choices"][0]["message"]["role"] == "assistant"
    assert doc["choices"][0]["message"]["content"]
    assert doc["usage"]["completion_tokens"] == 8
    assert doc["usage"]["prompt_tokens"] > 0


def test_completion(client: httpx.Client) -> None:
    body = {"model": QWEN, "prompt": "The capital of France is", "max_tokens": 5}
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["object"] == "text_completion" and doc["choices"][0]["text"]
    assert doc["usage"]["completion_tokens"] == 5


def test_streamed_chat_ends_with_done_and_reports_usage(client: httpx.Client) -> None:
    body = chat(LLAMA, stream=True, stream_options={"include_usage": True}, max_tokens=6)
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == LLAMA for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 6


def test_streamed_completion(client: httpx.Client) -> None:
    body = {"model": QWEN, "prompt": "Once upon a time", "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert len(texts) >= 4 and "".join(texts)


def test_two_models_are_routed_by_name_to_their_own_replicas(
    stack: RunningStack, client: httpx.Client
) -> None:
    by_model = {r.endpoint: r.model for r in stack.replicas()}
    before = successes(stack)
    for _ in range(4):
        for model in (QWEN, LLAMA):
            resp = client.post("/v1/chat/completions", json=chat(model))
            assert resp.status_code == 200, resp.text
            assert resp.json()["model"] == model
    after = successes(stack)
    served: dict[str, float] = {}
    for endpoint, count in after.items():
        pool = by_model[endpoint]
        served[pool] = served.get(pool, 0) + count - before.get(endpoint, 0)
    assert served == {"qwen3": 4, "llama": 4, "sat": 0}


def test_lora_adapter_is_routed_to_the_replicas_that_serve_it(
    stack: RunningStack, client: httpx.Client
) -> None:
    holders = {
        r.endpoint
        for r in stack.replicas()
        if ADAPTER in [m["id"] for m in httpx.get(f"http://{r.endpoint}/v1/models").json()["data"]]
    }
    assert holders == {r.endpoint for r in stack.replicas("llama")}
    before = successes(stack)
    for _ in range(4):
        resp = client.post("/v1/chat/completions", json=chat(ADAPTER))
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == ADAPTER
    after = successes(stack)
    grew = {e for e in after if after[e] > before.get(e, 0)}
    assert grew and grew <= holders


def test_models_list_through_the_gateway(client: httpx.Client) -> None:
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    ids = {m["id"] for m in resp.json()["data"]}
    assert QWEN in ids


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
            "application/json",
        ),
        (json.dumps({"model": QWEN, "messages": "not a list"}).encode(), "application/json"),
        (
            json.dumps({"model": QWEN, "messages": [], "max_tokens": -3}).encode(),
            "application/json",
        ),
    ],
    ids=["invalid-json", "no-model", "messages-not-a-list", "negative-max-tokens"],
)
def test_malformed_requests_are_400_with_an_openai_error(
    client: httpx.Client, body: bytes, content_type: str
) -> None:
    resp = client.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert (err["type"], err["code"]) == ("BadRequestError", 400)


def test_unknown_model_is_404(client: httpx.Client) -> None:
    resp = client.post("/v1/chat/completions", json=chat("no-such-model"))
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert (err["type"], err["code"]) == ("NotFoundError", 404)
    assert "no-such-model" in err["message"]
