"""OpenAI API models: request parsing with one-line errors, and the error body."""

from llmd_sdk.openai.errors import OpenAIError, error_body, error_json, error_type
from llmd_sdk.openai.parse import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    decode_json,
    json_type_name,
    kind_of,
    parse_request,
    peek_model,
    validate_request,
)
from llmd_sdk.openai.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    InferenceRequest,
    StreamOptions,
)

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "InferenceRequest",
    "OpenAIError",
    "StreamOptions",
    "decode_json",
    "error_body",
    "error_json",
    "error_type",
    "json_type_name",
    "kind_of",
    "parse_request",
    "peek_model",
    "validate_request",
]
