"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, as vLLM returns it."""

from __future__ import annotations

import json
from typing import Any

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    413: "BadRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def error_body(
    status: int,
    message: str,
    type_: str | None = None,
    code: Any = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type_ or error_type(status),
            "param": param,
            "code": code if code is not None else status,
        }
    }


def error_json(
    status: int,
    message: str,
    type_: str | None = None,
    code: Any = None,
    param: str | None = None,
) -> bytes:
    return json.dumps(error_body(status, message, type_, code, param)).encode()


class OpenAIError(Exception):
    """An error to return to an OpenAI client: an HTTP status and a one-line message."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        code: Any = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or error_type(status)
        self.code = code if code is not None else status
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.type, self.code, self.param)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()
