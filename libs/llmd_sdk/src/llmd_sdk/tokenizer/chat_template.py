"""Chat-template rendering as vLLM does it for ``/v1/chat/completions``.

vLLM hands the conversation to the Hugging Face tokenizer's ``apply_chat_template`` with
``add_generation_prompt=True`` (the request's default), ``tools=None`` when the request names none
and the tokenizer's special tokens as template variables. The template runs in a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a
``raise_exception`` global, a ``strftime_now`` global and a ``tojson`` filter that keeps non-ASCII
characters. Message content given as a list of parts is flattened to a string (text parts joined
with newlines) unless the template itself iterates over the parts, which is vLLM's "openai"
content format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A template that loops over message content parts wants the list form ("openai" format).
_ITERATES_CONTENT = re.compile(
    r"for\s+\w+\s+in\s+(?:message|msg|m)\s*(?:\[\s*['\"]content['\"]\s*\]|\.content)"
)


class ChatTemplateError(ValueError):
    """The chat template could not be rendered for these messages (one line, user-facing)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat_template: syntax error: {exc.message}") from None


def content_format(source: str) -> str:
    """``"openai"`` when the template iterates over content parts, else ``"string"``."""
    return "openai" if _ITERATES_CONTENT.search(source) else "string"


def _flatten_content(content: Any) -> Any:
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return content


def normalise_messages(messages: Sequence[Mapping[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Messages as plain dicts, with list content flattened for "string"-format templates."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}]: must be an object")
        if "role" not in message:
            raise ChatTemplateError(f"messages[{i}].role: field required")
        msg = dict(message)
        if fmt == "string" and "content" in msg:
            msg["content"] = _flatten_content(msg["content"])
        elif fmt == "openai" and isinstance(msg.get("content"), str):
            msg["content"] = [{"type": "text", "text": msg["content"]}]
        out.append(msg)
    return out


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    special_tokens: Mapping[str, Any],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    continue_final_message: bool = False,
    **template_kwargs: Any,
) -> str:
    """Render `messages` with the template `source` (the string vLLM would tokenize)."""
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message: cannot be combined with add_generation_prompt"
        )
    template = compile_template(source)
    variables: dict[str, Any] = dict(special_tokens)
    variables.update(template_kwargs)
    try:
        rendered = template.render(
            messages=normalise_messages(messages, content_format(source)),
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat_template: {exc}") from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise ChatTemplateError(f"chat_template: cannot render these messages: {exc}") from None
    if continue_final_message and messages:
        last = messages[-1].get("content")
        final = _flatten_content(last) if not isinstance(last, str) else last
        if isinstance(final, str) and final and final in rendered:
            rendered = rendered[: rendered.rindex(final) + len(final)]
    return rendered
