"""Request models of `/v1/completions` and `/v1/chat/completions`.

Only the fields the stack reads are typed; every other field is kept (`extra="allow"`) so a
request can be re-serialised unchanged apart from what we mean to change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    # A string, a list of content parts ({"type": "text", "text": ...}, images...), or None.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    cache_salt: str | None = None
    user: str | None = None

    def body(self) -> dict[str, Any]:
        """The request as JSON-ready data, unknown fields included, unset defaults left out."""
        return self.model_dump(mode="json", exclude_unset=True)


class ChatCompletionRequest(_Request):
    kind: Literal["chat"] = Field(default="chat", exclude=True)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)

    @property
    def max_output_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def prompt_text(self) -> str:
        """A role-tagged flattening of the conversation: a template-free routing key."""
        return "".join(f"<|{m.role}|>{m.text()}" for m in self.messages)


class CompletionRequest(_Request):
    kind: Literal["completion"] = Field(default="completion", exclude=True)
    # A string, a batch of strings, token ids, or a batch of token id lists.
    prompt: str | list[str] | list[int] | list[list[int]]

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        """The prompt text (the first of a batch); empty for token-id prompts."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if p and isinstance(p[0], str):
            return str(p[0])
        return ""

    def prompt_token_ids(self) -> list[int] | None:
        """The token ids when the prompt was given as ids (the first of a batch)."""
        p = self.prompt
        if isinstance(p, list) and p:
            if isinstance(p[0], int):
                return [int(t) for t in p]  # type: ignore[arg-type,unused-ignore]
            if isinstance(p[0], list):
                return [int(t) for t in p[0]]
        return None


InferenceRequest = ChatCompletionRequest | CompletionRequest
