"""Engine identity from a KV-event topic.

llm-d's convention is ``kv@<endpoint>@<model>`` (vLLM's ``--kv-events-config`` ``topic``); the
pattern is configurable with ``{endpoint}`` and ``{model}`` placeholders. The endpoint may hold
``:`` (``ip:port``); the model is the rest of the topic, so it may hold ``@`` or ``/``.
"""

from __future__ import annotations

import re

DEFAULT_TOPIC_PATTERN = "kv@{endpoint}@{model}"


class TopicPattern:
    """Parses topics such as ``kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B``."""

    __slots__ = ("_cache", "_re", "pattern")

    def __init__(self, pattern: str = DEFAULT_TOPIC_PATTERN) -> None:
        if "{endpoint}" not in pattern:
            raise ValueError(f"topic_pattern: {pattern!r} has no {{endpoint}} placeholder")
        self.pattern = pattern
        regex = ""
        for i, part in enumerate(re.split(r"(\{endpoint\}|\{model\})", pattern)):
            if part == "{endpoint}":
                regex += r"(?P<endpoint>[^@]+?)"
            elif part == "{model}":
                regex += r"(?P<model>.+)"
            elif i % 2 == 0:
                regex += re.escape(part)
            else:  # pragma: no cover - split only yields the two placeholders
                raise ValueError(part)
        self._re = re.compile(regex + r"\Z")
        self._cache: dict[bytes, tuple[str, str | None] | None] = {}

    def format(self, endpoint: str, model: str) -> str:
        """The topic an engine at `endpoint` serving `model` publishes under."""
        return self.pattern.replace("{endpoint}", endpoint).replace("{model}", model)

    def parse(self, topic: bytes) -> tuple[str, str | None] | None:
        """(endpoint, model or None when the pattern has no model), or None if it does not match."""
        hit = self._cache.get(topic)
        if hit is not None or topic in self._cache:
            return hit
        try:
            m = self._re.match(topic.decode())
        except UnicodeDecodeError:
            m = None
        out = None if m is None else (m["endpoint"], m.groupdict().get("model"))
        if len(self._cache) > 65_536:
            self._cache.clear()
        self._cache[topic] = out
        return out
