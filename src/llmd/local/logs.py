"""One log stream for the whole stack: every child's lines, tagged with its component.

Children log JSON lines (structlog). Each line is parsed and re-emitted with a `component`
field: as JSON (`--log-format json`, one object per line, for machines) or as a console line
`component | level event key=value` (the default on a terminal). Lines that are not JSON (a
traceback, a third-party print) pass through as the `event` of an `info` record. Records below
the configured level are dropped; the last lines of every component are kept for error messages.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}
_SKIP_KEYS = ("event", "level", "timestamp", "service", "logger", "component")
# Client libraries that log every request at info (the EPP scrapes each engine every 50 ms):
# their info lines count as debug here.
_CHATTY_LOGGERS = frozenset({"httpx", "httpcore"})


class LogSink:
    """Where the stack's log records go. Thread-safe; `emit` never raises."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        fmt: str = "console",
        level: str = "info",
        keep: int = 40,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.json = fmt == "json"
        self.min_level = LEVELS.get(level.lower(), 20)
        self._tails: dict[str, collections.deque[dict[str, Any]]] = {}
        self._keep = keep
        self._lock = threading.Lock()
        self.width = 14

    def record(self, component: str, line: str) -> dict[str, Any]:
        """A child's raw line as a record (parsed JSON, or the text as its event)."""
        text = line.rstrip("\r\n")
        rec: dict[str, Any] | None = None
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                rec = parsed
        if rec is None:
            rec = {"event": text, "level": "info"}
        rec["component"] = component
        if rec.get("logger") in _CHATTY_LOGGERS and str(rec.get("level", "")).lower() == "info":
            rec["level"] = "debug"
        return rec

    def line(self, component: str, line: str) -> None:
        """Forward one line a child wrote."""
        if not line.strip():
            return
        self.emit(self.record(component, line))

    def log(self, component: str, level: str, event: str, **fields: Any) -> None:
        """A record of the stack's own (the supervisor's)."""
        self.emit({"component": component, "level": level, "event": event, **fields})

    def emit(self, rec: dict[str, Any]) -> None:
        component = str(rec.get("component", "llmd"))
        level = str(rec.get("level", "info")).lower()
        with self._lock:
            tail = self._tails.get(component)
            if tail is None:
                tail = self._tails[component] = collections.deque(maxlen=self._keep)
            tail.append(rec)
            if LEVELS.get(level, 20) < self.min_level:
                return
            try:
                self.stream.write(self._render(component, level, rec) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not take the stack down

    def _render(self, component: str, level: str, rec: dict[str, Any]) -> str:
        if self.json:
            rec.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z")
            return json.dumps(rec, default=str, separators=(",", ":"))
        extras = " ".join(
            f"{k}={_short(v)}" for k, v in rec.items() if k not in _SKIP_KEYS and v is not None
        )
        event = str(rec.get("event", ""))
        return f"{component:<{self.width}} | {level:<7} {event}{' ' + extras if extras else ''}"

    def tail(self, component: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._tails.get(component, ()))

    def last_words(self, component: str) -> str:
        """The most telling recent line of a component: its last error, else its last line."""
        recs = self.tail(component)
        for rec in reversed(recs):
            if str(rec.get("level", "")).lower() in ("error", "critical"):
                return _describe(rec)
        for rec in reversed(recs):
            text = _describe(rec)
            if text and not text.startswith("Traceback"):
                return text
        return ""


def _describe(rec: dict[str, Any]) -> str:
    event = str(rec.get("event", "")).strip()
    for key in ("error", "exc", "reason", "message"):
        if rec.get(key):
            return f"{event}: {rec[key]}" if event else str(rec[key])
    return event


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if " " in text and not text.startswith(("{", "[")):
        text = json.dumps(text)
    return text if len(text) <= 200 else text[:197] + "..."
