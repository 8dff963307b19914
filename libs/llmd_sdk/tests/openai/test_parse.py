from __future__ import annotations

import json

import pytest
from llmd_sdk.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    json_type_name,
    parse_request,
    peek_model,
)

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"


def test_chat_request_keeps_unknown_fields_and_reads_known_ones() -> None:
    body = {
        "model": "llama",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
            },
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 7,
        "cache_salt": "tenant-a",
        "logit_bias": {"42": 1},
        "vendor_ext": {"x": [1, 2]},
    }
    req = parse_request(json.dumps(body).encode(), CHAT)
    assert isinstance(req, ChatCompletionRequest)
    assert (req.model, req.stream, req.max_output_tokens, req.cache_salt) == (
        "llama",
        True,
        7,
        "tenant-a",
    )
    assert req.stream_options is not None and req.stream_options.include_usage
    assert req.messages[1].text() == "hi there"
    assert req.prompt_text() == "<|system|>be brief<|user|>hi there"
    assert req.body() == body


@pytest.mark.parametrize(
    ("prompt", "text", "ids"),
    [
        ("once upon", "once upon", None),
        (["a", "b"], "a", None),
        ([1, 2, 3], "", [1, 2, 3]),
        ([[4, 5], [6]], "", [4, 5]),
    ],
)
def test_completion_prompt_forms(prompt: object, text: str, ids: list[int] | None) -> None:
    req = parse_request(
        json.dumps({"model": "m", "prompt": prompt, "max_tokens": 3}).encode(), COMPL
    )
    assert isinstance(req, CompletionRequest)
    assert req.prompt_text() == text
    assert req.prompt_token_ids() == ids
    assert req.max_output_tokens == 3


@pytest.mark.parametrize(
    ("body", "path", "needle", "param"),
    [
        (b"{", CHAT, "not valid JSON", None),
        (b"[]", CHAT, "must be a JSON object", None),
        (
            b'{"messages": [{"role": "user", "content": "x"}]}',
            CHAT,
            "model: field required",
            "model",
        ),
        (
            b'{"model": 7, "prompt": "x"}',
            COMPL,
            "model: input should be a valid string (got 7)",
            "model",
        ),
        (
            b'{"model": "m", "messages": "hi"}',
            CHAT,
            "messages: input should be a valid list",
            "messages",
        ),
        (
            b'{"model": "m", "prompt": "x", "max_tokens": -1}',
            COMPL,
            "max_tokens: input should be greater than or equal to 0",
            "max_tokens",
        ),
        (
            b'{"model": "", "prompt": "x"}',
            COMPL,
            "model: string should have at least 1 character",
            "model",
        ),
    ],
)
def test_bad_requests_are_one_line_400s_naming_the_field(
    body: bytes, path: str, needle: str, param: str | None
) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_request(body, path)
    err = info.value
    assert err.status == 400
    assert needle in err.message
    assert "\n" not in err.message
    assert err.param == param
    doc = json.loads(err.to_json())
    assert doc["error"]["type"] == "BadRequestError" and doc["error"]["code"] == 400


def test_every_bad_field_is_listed() -> None:
    with pytest.raises(OpenAIError) as info:
        parse_request(b'{"model": 1, "prompt": "x", "n": 0, "temperature": -2}', COMPL)
    for field in ("model:", "n:", "temperature:"):
        assert field in info.value.message


def test_path_decides_the_kind_and_body_shape_breaks_ties() -> None:
    both = b'{"model": "m", "prompt": "p", "messages": [{"role": "user", "content": "c"}]}'
    assert isinstance(parse_request(both, COMPL + "?x=1"), CompletionRequest)
    assert isinstance(parse_request(both, CHAT), ChatCompletionRequest)
    assert isinstance(parse_request(both, "/other"), ChatCompletionRequest)


def test_peek_model() -> None:
    assert peek_model(b'{"a": [1, {"model": "inner"}], "model": "outer"}') == "outer"
    assert peek_model(b'{"model": 3}') is None
    assert peek_model(b"{}") is None
    with pytest.raises(OpenAIError):
        peek_model(b"nope")
    with pytest.raises(OpenAIError):
        peek_model(b"[1]")


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "a boolean"),
        (3, "a number"),
        (2.5, "a number"),
        ("x", "a string"),
        ([1], "an array"),
        ({"a": 1}, "an object"),
        ((1,), "tuple"),
    ],
)
def test_json_type_name_names_what_json_decoded(value: object, name: str) -> None:
    assert json_type_name(value) == name
