"""Reading the `model` out of an OpenAI request body, and writing a new one in.

One msgspec pass validates the whole JSON and decodes only the `model` member (every other
member is skipped in C), so BBR checks each body completely at a fraction of a full parse.
Rejections carry the HTTP status, a one-line message and the outcome label for metrics.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from llmd_sdk.openai import json_type_name

from llmd_bbr.model_scan import ModelToken, find_model, string_end

# Header values cannot carry control characters; a model name is a header value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_MODEL_CHARS = 1024


class BodyRejected(Exception):
    """A body BBR refuses: answered with an OpenAI error instead of being routed."""

    def __init__(self, status: int, message: str, outcome: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.param = param


class _ModelOnly(msgspec.Struct):
    model: Any = msgspec.UNSET


_decoder = msgspec.json.Decoder(_ModelOnly)


def extract_model(body: bytes) -> str | None:
    """The body's top-level `model`, or None when the object has no `model` member.

    Raises `BodyRejected` (400) when the body is not a JSON object, or `model` is not a string a
    header can carry. A repeated `model` key resolves to its last value, as in every JSON parser
    the request meets downstream.
    """
    try:
        doc = _decoder.decode(body)
    except msgspec.ValidationError:
        # The only typed thing is the top level: it is valid JSON but not an object.
        raise BodyRejected(
            400, f"request body must be a JSON object, not {_json_kind(body)}", "invalid_json"
        ) from None
    except msgspec.DecodeError as exc:
        raise BodyRejected(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    model = doc.model
    if model is msgspec.UNSET:
        return None
    return check_model(model)


def check_model(model: Any) -> str:
    """`model` as a routable name, or `BodyRejected` naming what is wrong with it."""
    if not isinstance(model, str):
        raise BodyRejected(
            400,
            f"model must be a string, got {json_type_name(model)}",
            "invalid_model",
            "model",
        )
    if not model:
        raise BodyRejected(400, "model must not be empty", "invalid_model", "model")
    if len(model) > MAX_MODEL_CHARS:
        raise BodyRejected(
            400, f"model is longer than {MAX_MODEL_CHARS} characters", "invalid_model", "model"
        )
    if _CONTROL.search(model) is not None:
        raise BodyRejected(
            400, "model must not contain control characters", "invalid_model", "model"
        )
    return model


def rewrite_model(body: bytes, new_model: str) -> bytes:
    """`body` with its (last) top-level `model` string replaced by `new_model`.

    Only the value's bytes change: every other member keeps its exact bytes. The caller has
    already checked, with `extract_model`, that the body is an object with a string `model`.
    """
    token = _sole_model_key(body) or find_model(body, last=True)
    if token is None or token.value is None:
        raise ValueError("body has no top-level model string to rewrite")
    return splice_model(body, token.start, token.end, new_model)


_MODEL_KEY = b'"model"'
# JSON may spell the key with escapes (`"\u006dodel"` is also `model`); every letter of `model`
# escapes as \u006X, so a body without that byte sequence writes every such key literally.
_ESCAPED_LETTER = b"\\u006"
_WS = b" \t\r\n"


def _sole_model_key(body: bytes) -> ModelToken | None:
    """The `model` value found with C-speed searches, when that is unambiguous.

    The body is known to be a JSON object with a top-level `model` key. When no key is written
    with escapes, that key appears literally; if `"model"` occurs exactly once, it is that key.
    Anything else (several occurrences, escaped keys) is left to the full scan.
    """
    first = body.find(_MODEL_KEY)
    if first < 0 or body.find(_MODEL_KEY, first + 1) >= 0 or _ESCAPED_LETTER in body:
        return None
    pos = first + len(_MODEL_KEY)
    n = len(body)
    while pos < n and body[pos] in _WS:
        pos += 1
    if pos >= n or body[pos] != 0x3A:  # ":"
        return None
    pos += 1
    while pos < n and body[pos] in _WS:
        pos += 1
    if pos >= n or body[pos] != 0x22:  # '"'
        return None
    end = string_end(body, pos + 1)
    if end < 0:
        return None
    try:
        value = json.loads(body[pos:end])
    except ValueError:
        return None
    return ModelToken(value, pos, end) if isinstance(value, str) else None


def splice_model(body: bytes | bytearray, start: int, end: int, new_model: str) -> bytes:
    return b"".join((body[:start], encode_model(new_model), body[end:]))


def encode_model(model: str) -> bytes:
    """A model name as a JSON string token (UTF-8, like the bodies it goes into)."""
    return json.dumps(model, ensure_ascii=False).encode()


def _json_kind(body: bytes) -> str:
    first = body.lstrip()[:1]
    return {
        b"[": "an array",
        b'"': "a string",
        b"n": "null",
        b"t": "a boolean",
        b"f": "a boolean",
    }.get(first, "a number")
