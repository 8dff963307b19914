"""Reading the model from a body, and the routing decision over a model table."""

from __future__ import annotations

import json

import pytest
from llmd_bbr.body import BodyRejected, extract_model, rewrite_model
from llmd_bbr.model_table import table_from_lists
from llmd_bbr.router import BASE_MODEL_HEADER, MODEL_HEADER, BodyRouter

TABLE = table_from_lists(
    base_models=["meta-llama/Llama-3.1-8B-Instruct"],
    adapters={"meta-llama/Llama-3.1-8B-Instruct": ["ski-resorts", "movie-critique"]},
    aliases={
        "llama": "meta-llama/Llama-3.1-8B-Instruct",
        "critic": ("movie-critique", True),
        "ünï": ("meta-llama/Llama-3.1-8B-Instruct", True),
    },
)


@pytest.mark.parametrize(
    ("body", "status", "outcome", "fragment"),
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b'{"model": "x"', 400, "invalid_json", "not valid JSON"),
        (b'{"model": "x"} trailing', 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_json", "must be a JSON object, not an array"),
        (b'"text"', 400, "invalid_json", "not a string"),
        (b"\xff\xfe", 400, "invalid_json", "not valid JSON"),
        (b'{"model": 3}', 400, "invalid_model", "model must be a string, got a number"),
        (b'{"model": null}', 400, "invalid_model", "got null"),
        (b'{"model": ["a"]}', 400, "invalid_model", "got an array"),
        (b'{"model": true}', 400, "invalid_model", "got a boolean"),
        (b'{"model": ""}', 400, "invalid_model", "must not be empty"),
        (b'{"model": "a\\nb"}', 400, "invalid_model", "control characters"),
        (b'{"prompt": "x"}', 400, "missing_model", "model is missing"),
    ],
)
def test_bad_bodies_are_rejected_with_one_line(
    body: bytes, status: int, outcome: str, fragment: str
) -> None:
    with pytest.raises(BodyRejected) as info:
        BodyRouter().decide(body)
    assert info.value.status == status
    assert info.value.outcome == outcome
    assert fragment in info.value.message
    assert "\n" not in info.value.message


def test_missing_model_passes_when_not_required() -> None:
    decision = BodyRouter(require_model=False).decide(b'{"prompt": "x"}')
    assert decision.outcome == "no_model" and decision.route is None


def test_empty_body_passes() -> None:
    assert BodyRouter().decide(b"").route is None


def test_unknown_model_routes_as_is_and_strips_a_client_base_header() -> None:
    d = BodyRouter(TABLE).decide(b'{"model": "mistral"}')
    assert d.set_headers == {MODEL_HEADER: "mistral"}
    assert d.remove_headers == (BASE_MODEL_HEADER,)
    assert d.body is None


def test_adapter_gets_its_base_and_base_gets_itself() -> None:
    router = BodyRouter(TABLE)
    d = router.decide(b'{"model": "ski-resorts"}')
    assert d.set_headers == {
        MODEL_HEADER: "ski-resorts",
        BASE_MODEL_HEADER: "meta-llama/Llama-3.1-8B-Instruct",
    }
    d = router.decide(b'{"model": "meta-llama/Llama-3.1-8B-Instruct"}')
    assert d.set_headers[BASE_MODEL_HEADER] == "meta-llama/Llama-3.1-8B-Instruct"


def test_alias_routes_without_touching_the_body() -> None:
    d = BodyRouter(TABLE).decide(b'{"model": "llama", "prompt": "x"}')
    assert d.set_headers[MODEL_HEADER] == "meta-llama/Llama-3.1-8B-Instruct"
    assert d.body is None and d.model == "llama"


def test_rewriting_alias_changes_only_the_model_bytes() -> None:
    body = b'{ "prompt" : 1.50e+2,\n "model":"critic", "x": {"model": "critic"} }'
    d = BodyRouter(TABLE).decide(body)
    assert d.set_headers == {
        MODEL_HEADER: "movie-critique",
        BASE_MODEL_HEADER: "meta-llama/Llama-3.1-8B-Instruct",
    }
    assert d.body == body.replace(b'"model":"critic"', b'"model":"movie-critique"')


def test_rewrite_of_a_unicode_alias_keeps_utf8() -> None:
    body = json.dumps({"model": "ünï", "prompt": "✓"}, ensure_ascii=True).encode()
    d = BodyRouter(TABLE).decide(body)
    assert d.body is not None
    assert json.loads(d.body) == {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "✓"}


def test_repeated_model_uses_the_last_value_like_json_parsers() -> None:
    body = b'{"model": "llama", "model": "critic"}'
    assert extract_model(body) == "critic"
    d = BodyRouter(TABLE).decide(body)
    assert d.body == b'{"model": "llama", "model": "movie-critique"}'


def test_rewrite_model_needs_a_string_model() -> None:
    with pytest.raises(ValueError):
        rewrite_model(b'{"prompt": 1}', "x")


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "a", "prompt": "x"}',
        b'{"prompt": "x", "model" :\n "a"}',
        b'{"messages": [{"role": "model", "content": "x"}], "model": "a"}',
        b'{"tools": [{"model": "a"}], "model": "a"}',
        b'{"\\u006dodel": "a", "x": {"model": "b"}}',
        b'{"x": {"model": "b"}, "\\u006dodel": "a"}',
        b'{"model": "a", "model": "a2"}',
        b'{"k\\\\": 1, "model": "a"}',
        '{"model": "é✓", "p": "✓"}'.encode(),
        b'{"model": "esc\\"aped", "p": 1}',
    ],
)
def test_rewrite_finds_the_top_level_model_like_the_full_scan(body: bytes) -> None:
    from llmd_bbr.body import splice_model
    from llmd_bbr.model_scan import find_model

    token = find_model(body, last=True)
    assert token is not None and token.value is not None
    expected = splice_model(body, token.start, token.end, "new")
    assert rewrite_model(body, "new") == expected
    assert json.loads(rewrite_model(body, "new"))["model"] == "new"
