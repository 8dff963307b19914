"""Parsing OpenAI request bodies: fast JSON, typed validation, one-line errors."""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic import ValidationError

from llmd_sdk.openai.errors import OpenAIError
from llmd_sdk.openai.requests import ChatCompletionRequest, CompletionRequest, InferenceRequest

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

_decoder = msgspec.json.Decoder()


class _ModelOnly(msgspec.Struct):
    model: Any = None


_model_decoder = msgspec.json.Decoder(_ModelOnly)


def decode_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or an `OpenAIError` 400."""
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OpenAIError(400, f"request body must be a JSON object, got {type(doc).__name__}")
    return doc


def kind_of(path: str, doc: dict[str, Any]) -> str:
    """ "chat" or "completion", from the path, else from the body's shape."""
    route = path.split("?", 1)[0].rstrip("/")
    if route.endswith("/chat/completions"):
        return "chat"
    if route.endswith("/completions"):
        return "completion"
    return "chat" if "messages" in doc else "completion"


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One line naming every bad field, and the first field as OpenAI's `param`."""
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        first = first or loc or None
        got = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {_short(got)})"
        parts.append(f"{loc or 'body'}: {err['msg'].lower()}{shown}")
    return "; ".join(parts), first


def json_type_name(value: Any) -> str:
    """The JSON type of a decoded value, as an error message names it ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_request(body: bytes, path: str = "") -> InferenceRequest:
    """Parse and validate a completions or chat completions request.

    Raises `OpenAIError` (400) for malformed JSON, wrong types or a missing model; the message
    is one line naming each offending field.
    """
    doc = decode_json(body)
    return validate_request(doc, kind_of(path, doc))


def validate_request(doc: dict[str, Any], kind: str) -> InferenceRequest:
    model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        return model_cls.model_validate(doc)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise OpenAIError(400, message, param=param) from None


def peek_model(body: bytes) -> str | None:
    """The top-level `model` string, skipping full validation (None when absent or not a string).

    Raises `OpenAIError` 400 when the body is not a JSON object.
    """
    try:
        found = _model_decoder.decode(body)
    except msgspec.ValidationError:
        raise OpenAIError(400, "request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}") from None
    return found.model if isinstance(found.model, str) else None
