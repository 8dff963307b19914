"""Response bodies shaped exactly like vLLM's OpenAI server's (``protocol.py``)."""

from __future__ import annotations

from typing import Any

import msgspec

_json = msgspec.json.Encoder()


def dumps(obj: Any) -> bytes:
    return _json.encode(obj)


def usage(prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached or 0},
    }
    return out


def chat_message(text: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning_content": None,
    }


def chat_completion(
    rid: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
    kv_transfer_params: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_,
        "prompt_logprobs": None,
        "kv_transfer_params": kv_transfer_params,
    }


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": chat_message(text),
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
    }


def completion(
    rid: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
    kv_transfer_params: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_,
        "kv_transfer_params": kv_transfer_params,
    }


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "prompt_logprobs": None,
    }


def sse(obj: Any) -> bytes:
    return b"data: " + _json.encode(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def chat_chunk(
    rid: str, created: int, model: str, index: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        ],
    }


def completion_chunk(
    rid: str, created: int, model: str, index: int, text: str, finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        ],
    }


_TEXT_SLOT = "@@llmd-sim-text@@"
_TEXT_SLOT_JSON = b'"' + _TEXT_SLOT.encode() + b'"'


class ChunkWriter:
    """Pre-rendered SSE chunk bytes for one choice: only the text is encoded per chunk."""

    __slots__ = ("_head", "_tail")

    def __init__(self, rid: str, created: int, model: str, index: int, chat: bool) -> None:
        if chat:
            template = chat_chunk(rid, created, model, index, {"content": _TEXT_SLOT}, None)
        else:
            template = completion_chunk(rid, created, model, index, _TEXT_SLOT, None)
        self._head, self._tail = sse(template).split(_TEXT_SLOT_JSON)

    def text(self, delta: str) -> bytes:
        """The chunk carrying `delta` with no finish reason (byte-identical to `sse(...)`)."""
        return self._head + _json.encode(delta) + self._tail


def usage_chunk(
    rid: str, created: int, model: str, obj: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_,
    }


def model_card(
    name: str, root: str, parent: str | None, max_model_len: int | None, created: int
) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": f"modelperm-{name}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
