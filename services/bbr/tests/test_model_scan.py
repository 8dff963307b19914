"""The incremental model scanner against Python's json, at every split of every document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llmd_bbr.model_scan import ModelScanner, find_model

DOCS: list[bytes] = [
    b'{"model": "llama", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"messages": [{"role": "user", "content": "a \\"model\\": \\"x\\" {]"}], "model": "m2"}',
    b'{"stream":true,"max_tokens":12,"temperature":0.5,"model":"q"}',
    b'{"n": -1.5e3, "x": null, "y": false, "model" : "spaced" }',
    b'{"nested": {"model": "inner", "deep": [[{"model": 1}]]}, "model": "outer"}',
    '{"model": "modèle-✓", "prompt": "héllo ✓ 你好"}'.encode(),
    b'{"model": "esc\\u00e9\\"q\\\\", "prompt": "x"}',
    b'{"\\u006dodel": "escaped-key", "prompt": "x"}',
    b'{"prompt": "ends with backslash\\\\", "model": "after-bs"}',
    b'{"prompt": "\\\\\\"", "model": "tricky"}',
    b'{"model": 42, "prompt": "x"}',
    b'{"model": {"name": "x"}, "prompt": "y"}',
    b'{"model": null}',
    b'{"model": ["a"], "model": "later"}',
    b'{"model": "first", "x": 1, "model": "second"}',
    b'{"prompt": "no model here", "models": "plural", "mode": "x"}',
    b"{}",
    b'  \n {\n  "model"\n  :\n  "ws"\n}\n',
    b'[{"model": "in-array"}]',
    b'"model"',
]


def _pairs(body: bytes) -> list[tuple[str, Any]]:
    doc = json.loads(body, object_pairs_hook=list)
    return doc if isinstance(doc, list) and all(isinstance(p, tuple) for p in doc) else []


def _expected(body: bytes, *, last: bool) -> tuple[bool, Any]:
    """(found, value) by Python's json: first or last top-level `model` member."""
    if not body.lstrip().startswith(b"{"):
        return False, None
    models = [v for k, v in _pairs(body) if k == "model"]
    if not models:
        return False, None
    return True, models[-1] if last else models[0]


def _check(body: bytes, scanner: ModelScanner, last: bool) -> None:
    found, value = _expected(body, last=last)
    token = scanner.token
    if not found:
        assert token is None, body
        return
    assert token is not None, body
    if isinstance(value, str):
        assert token.value == value
        assert json.loads(body[token.start : token.end]) == value
    else:
        assert token.value is None
        assert json.loads(body[token.start : token.end], object_pairs_hook=list) == value


@pytest.mark.parametrize("body", DOCS, ids=range(len(DOCS)))
@pytest.mark.parametrize("last", [False, True])
def test_every_two_way_split_agrees_with_json(body: bytes, last: bool) -> None:
    for at in range(len(body) + 1):
        scanner = ModelScanner(last=last)
        scanner.feed(body[:at])
        if not last and scanner.token is not None:
            # Found from a prefix: the token must lie inside it and already be right.
            assert scanner.token.end <= at
        scanner.feed(body[at:])
        _check(body, scanner, last)


@pytest.mark.parametrize("body", DOCS, ids=range(len(DOCS)))
def test_byte_by_byte(body: bytes) -> None:
    for last in (False, True):
        scanner = ModelScanner(last=last)
        for i in range(len(body)):
            scanner.feed(body[i : i + 1])
        _check(body, scanner, last)


def test_first_mode_stops_as_soon_as_the_value_is_complete() -> None:
    head = b'{"model": "early", "messages": ['
    scanner = ModelScanner()
    assert scanner.feed(head[:12]) is None
    token = scanner.feed(head[12:])
    assert token is not None and token.value == "early"
    assert scanner.done
    # Later bytes are not looked at (and not kept).
    scanner.feed(b"x" * 1000)
    assert scanner.scanned == 0


def test_an_absent_model_is_known_at_the_closing_brace() -> None:
    scanner = ModelScanner()
    scanner.feed(b'{"prompt": "x", "n": 2')
    assert not scanner.done
    scanner.feed(b"}")
    assert scanner.done and scanner.token is None


def test_large_nested_value_split_in_many_chunks_is_linear() -> None:
    messages = [{"role": "user", "content": 'é\\"{[' * 50} for _ in range(200)]
    body = json.dumps({"messages": messages, "model": "big"}).encode()
    scanner = ModelScanner()
    for i in range(0, len(body), 7):
        scanner.feed(body[i : i + 7])
    assert scanner.token is not None and scanner.token.value == "big"


def test_find_model_defaults_to_the_last_member() -> None:
    body = b'{"model": "a", "model": "b"}'
    token = find_model(body)
    assert token is not None and token.value == "b"
    first = find_model(body, last=False)
    assert first is not None and first.value == "a"
