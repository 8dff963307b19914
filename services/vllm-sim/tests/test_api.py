"""The OpenAI API of an in-process simulator: shapes, streaming, errors, tokenization, LoRA."""

from __future__ import annotations

import json
from typing import Any

import pytest

FAST = ("--time-scale", "0")


def sse_events(body: str) -> list[Any]:
    out: list[Any] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_chat_completion_shape_and_usage(make_sim: Any) -> None:
    async with make_sim(*FAST, "--served-model-name", "m") as (client, _):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 7},
        )
        assert r.status_code == 200
        body = r.json()
        assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
        assert isinstance(body["created"], int) and body["model"] == "m"
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
        assert choice["finish_reason"] == "length" and choice["index"] == 0
        usage = body["usage"]
        tok = await client.post(
            "/tokenize", json={"messages": [{"role": "user", "content": "Hi!"}]}
        )
        assert usage["prompt_tokens"] == tok.json()["count"]
        assert usage["completion_tokens"] == 7
        assert usage["total_tokens"] == usage["prompt_tokens"] + 7
        assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
        assert body["kv_transfer_params"] is None


async def test_repeat_prompt_reports_cached_tokens(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, _):
        prompt = "word " * 200
        req = {"model": "llmd-sim", "prompt": prompt, "max_tokens": 2}
        first = (await client.post("/v1/completions", json=req)).json()
        second = (await client.post("/v1/completions", json=req)).json()
        n = first["usage"]["prompt_tokens"]
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached == (n - 1) // 16 * 16 and cached > 0


async def test_echo_mode_returns_the_prompt_and_stops(make_sim: Any) -> None:
    async with make_sim(*FAST, "--mode", "echo") as (client, _):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "llmd-sim", "messages": [{"role": "user", "content": "ping pong"}]},
        )
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == "ping pong" and choice["finish_reason"] == "stop"
        r = await client.post(
            "/v1/completions",
            json={"model": "llmd-sim", "prompt": "one two three four", "max_tokens": 2},
        )
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert "one two three four".startswith(r.json()["choices"][0]["text"])


async def test_chat_streaming_chunks_usage_and_done(make_sim: Any) -> None:
    async with make_sim("--time-scale", "0.01", "--mode", "echo") as (client, _):
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "llmd-sim",
                "messages": [{"role": "user", "content": "a streaming answer"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "a streaming answer"
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
        usage_chunk = chunks[-1]
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] >= 3
        # One chunk per engine step: several content chunks, not one blob.
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"]) >= 3


async def test_completion_streaming_without_usage(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, _):
        r = await client.post(
            "/v1/completions",
            json={"model": "llmd-sim", "prompt": "x", "max_tokens": 4, "stream": True},
        )
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert len(chunks) == 4 and all(c["object"] == "text_completion" for c in chunks)
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_n_and_batched_prompts_give_several_choices(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, _):
        r = await client.post(
            "/v1/completions",
            json={"model": "llmd-sim", "prompt": ["a b", "c d"], "n": 2, "max_tokens": 3},
        )
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
        assert body["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "llmd-sim", "prompt": 5}', 400, "prompt"),
        (b'{"model": "llmd-sim", "prompt": "x", "max_tokens": "many"}', 400, "max_tokens"),
        (b'{"model": "llmd-sim", "prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"prompt": "x"}', 400, "model"),
        (b'{"model": "other", "prompt": "x"}', 404, "does not exist"),
        (b'{"model": "llmd-sim", "prompt": [99999999]}', 400, "out of vocabulary"),
        (b'{"model": "llmd-sim", "prompt": "x", "kv_transfer_params": 3}', 400, "kv_transfer"),
    ],
)
async def test_bad_requests_get_openai_errors(
    make_sim: Any, payload: bytes, status: int, needle: str
) -> None:
    async with make_sim(*FAST) as (client, _):
        r = await client.post("/v1/completions", content=payload)
        assert r.status_code == status
        err = r.json()["error"]
        assert needle in err["message"] and "\n" not in err["message"]
        assert err["code"] == status
        assert err["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
        # The server keeps serving.
        ok = await client.post("/v1/completions", json={"model": "llmd-sim", "prompt": "x"})
        assert ok.status_code == 200


async def test_prompt_too_long_and_max_tokens_too_large(make_sim: Any) -> None:
    async with make_sim(*FAST, "--max-model-len", "64") as (client, _):
        r = await client.post("/v1/completions", json={"model": "llmd-sim", "prompt": "w " * 100})
        assert r.status_code == 400
        assert "maximum context length is 64 tokens" in r.json()["error"]["message"]
        r = await client.post(
            "/v1/completions", json={"model": "llmd-sim", "prompt": "hi", "max_tokens": 100}
        )
        assert r.status_code == 400 and "'max_tokens'" in r.json()["error"]["message"]


async def test_chat_without_messages_is_a_one_line_400(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, _):
        r = await client.post("/v1/chat/completions", json={"model": "llmd-sim", "messages": []})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


async def test_models_tokenize_detokenize(make_sim: Any) -> None:
    async with make_sim(*FAST, "--served-model-name", "a", "b") as (client, _):
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["a", "b"]
        assert models["data"][0]["owned_by"] == "vllm" and models["data"][0]["max_model_len"]
        tok = (
            await client.post("/tokenize", json={"prompt": "hello", "return_token_strs": True})
        ).json()
        assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"])
        assert tok["token_strs"][0] == "<|bos|>"
        detok = (await client.post("/detokenize", json={"tokens": tok["tokens"]})).json()
        assert detok == {"prompt": "hello"}
        bad = await client.post("/detokenize", json={"tokens": ["x"]})
        assert bad.status_code == 400
        unknown = await client.post("/tokenize", json={"model": "zzz", "prompt": "x"})
        assert unknown.status_code == 404


async def test_lora_load_use_unload(make_sim: Any) -> None:
    async with make_sim(*FAST, "--enable-lora", "--lora-modules", "sql=/adapters/sql") as (
        client,
        state,
    ):
        names = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert names == ["llmd-sim", "sql"]
        r = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/adapters/chat"}
        )
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'chat' added successfully."
        again = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/adapters/chat"}
        )
        assert (
            again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        )
        cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert cards["chat"]["root"] == "/adapters/chat" and cards["chat"]["parent"] == "llmd-sim"
        r = await client.post("/v1/completions", json={"model": "chat", "prompt": "x"})
        assert r.status_code == 200 and r.json()["model"] == "chat"
        metrics = (await client.get("/metrics")).text
        assert 'vllm:lora_requests_info{max_lora="1"' in metrics
        r = await client.post("/v1/unload_lora_adapter", json={"lora_name": "chat"})
        assert r.status_code == 200
        gone = await client.post("/v1/completions", json={"model": "chat", "prompt": "x"})
        assert gone.status_code == 404
        missing = await client.post("/v1/unload_lora_adapter", json={"lora_name": "chat"})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
        assert state.loras.adapters["sql"].int_id == 1


async def test_data_parallel_rank_header_picks_the_engine(make_sim: Any) -> None:
    async with make_sim(*FAST, "--data-parallel-size", "2") as (client, state):
        for _ in range(3):
            r = await client.post(
                "/v1/completions",
                json={"model": "llmd-sim", "prompt": "x", "max_tokens": 1},
                headers={"X-data-parallel-rank": "1"},
            )
            assert r.status_code == 200
        stats = state.metrics.engines
        assert stats[1].request_success["length"] == 3 and stats[0].request_success["length"] == 0
        text = (await client.get("/metrics")).text
        assert (
            'vllm:request_success_total{engine="1",finished_reason="length",model_name="llmd-sim"} 3.0'
            in text
        )
        bad = await client.post(
            "/v1/completions",
            json={"model": "llmd-sim", "prompt": "x"},
            headers={"X-data-parallel-rank": "2"},
        )
        assert bad.status_code == 400


async def test_injected_http_failures(make_sim: Any) -> None:
    async with make_sim(*FAST, "--failure-rate", "1", "--failure-kinds", "http429") as (client, _):
        r = await client.post("/v1/completions", json={"model": "llmd-sim", "prompt": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == 429
        # Bad requests are still validated first.
        assert (await client.post("/v1/completions", content=b"{")).status_code == 400
    async with make_sim(*FAST, "--failure-rate", "1", "--failure-kinds", "http500") as (client, s):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "llmd-sim", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
        assert s.failures.injected == {"http500": 1}
        # The injected request left no work behind.
        assert all(not runner.core.has_unfinished() for runner in s.runners)


async def test_injected_stall_holds_the_response(make_sim: Any) -> None:
    import asyncio

    async with make_sim(
        *FAST, "--failure-rate", "1", "--failure-kinds", "stall", "--stall-seconds", "30"
    ) as (
        client,
        _,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                client.post("/v1/completions", json={"model": "llmd-sim", "prompt": "x"}), 0.5
            )


async def test_reset_prefix_cache_endpoint(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, state):
        req = {"model": "llmd-sim", "prompt": "word " * 100, "max_tokens": 1}
        await client.post("/v1/completions", json=req)
        assert state.runners[0].core.kv.cached
        r = await client.post("/reset_prefix_cache")
        assert r.status_code == 200 and not state.runners[0].core.kv.cached
        again = (await client.post("/v1/completions", json=req)).json()
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_streaming_several_choices_finishes_each(make_sim: Any) -> None:
    async with make_sim("--time-scale", "0.01") as (client, _):
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "llmd-sim",
                "messages": [{"role": "user", "content": "x"}],
                "n": 2,
                "max_tokens": 5,
                "stream": True,
            },
        )
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        by_index: dict[int, list[Any]] = {0: [], 1: []}
        for c in events[:-1]:
            by_index[c["choices"][0]["index"]].append(c["choices"][0])
        for choices in by_index.values():
            assert choices[0]["delta"] == {"role": "assistant", "content": ""}
            assert [c["finish_reason"] for c in choices][-1] == "length"
            assert sum(1 for c in choices if c["delta"].get("content")) == 5
