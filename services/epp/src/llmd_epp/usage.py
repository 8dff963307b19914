"""Reading `usage` from a response body, streamed (SSE) or not, without holding it all.

`UsageTracker` is fed the response chunks as they pass; it keeps only a bounded tail (the usage
object comes in the last event of a stream, or anywhere in a small JSON body) and parses once
at the end.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_BODY = 4 * 1024 * 1024
TAIL_BYTES = 64 * 1024


class UsageTracker:
    def __init__(self) -> None:
        self.size = 0
        self._head: list[bytes] = []  # whole body while it is small enough to be JSON
        self._tail = b""
        self._sse: bool | None = None
        self.chunks = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.chunks += 1
        self.size += len(chunk)
        if self._sse is None:
            self._sse = chunk.lstrip().startswith((b"data:", b":", b"event:"))
        if self.size <= MAX_JSON_BODY:
            self._head.append(chunk)
        else:
            self._head.clear()
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]

    def usage(self) -> dict[str, Any] | None:
        """The last `usage` object seen, or None."""
        if self._sse:
            return _sse_usage(self._tail)
        if self._head:
            try:
                doc = json.loads(b"".join(self._head))
            except ValueError:
                return None
            u = doc.get("usage") if isinstance(doc, dict) else None
            return u if isinstance(u, dict) else None
        return None


def _sse_usage(tail: bytes) -> dict[str, Any] | None:
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]" or b'"usage"' not in payload:
            continue
        try:
            doc = json.loads(payload)
        except ValueError:
            continue
        u = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(u, dict):
            return u
    return None
