"""Find the top-level `"model"` string of a JSON object while its bytes are still arriving.

FULL_DUPLEX_STREAMED lets BBR answer Envoy's request headers as soon as it knows the model, then
stream the body back as it arrives instead of holding all of it. `ModelScanner` is the
incremental part: fed chunk by chunk, it walks only the top level of the object, skipping nested
values and strings with C-speed searches (`bytes.find`, one compiled regex), and stops at the
first complete top-level `model` value. It does not validate the JSON: the whole body is parsed
once at end of stream anyway (`llmd_bbr.body`), and that parse is the judge.

It also gives the byte span of the value, so an alias can be rewritten in place: the rest of the
body (unknown fields, number formatting, key order, whitespace) stays byte-for-byte the same.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

_WS = b" \t\r\n"
# The bytes that matter while skipping a nested value: string starts and bracket changes.
_STRUCTURAL = re.compile(rb'["{}\[\]]')
# The end of a number, true, false or null at the top level.
_SCALAR_END = re.compile(rb"[,}\s]")
_MODEL_KEY = b"model"


class _State(enum.Enum):
    START = enum.auto()  # before the opening brace
    KEY = enum.auto()  # expecting a key (or the closing brace)
    COLON = enum.auto()
    VALUE = enum.auto()
    SKIP_STRING = enum.auto()  # inside a top-level string value we do not need
    SKIP_NESTED = enum.auto()  # inside a top-level object/array value
    SKIP_SCALAR = enum.auto()
    AFTER_VALUE = enum.auto()  # expecting a comma or the closing brace
    DONE = enum.auto()  # found, absent, or not an object: nothing more to learn


@dataclass(frozen=True, slots=True)
class ModelToken:
    """A top-level `model` value: the decoded value, or None when it is not a JSON string."""

    value: str | None
    start: int  # byte offset of the value's first byte (the opening quote for a string)
    end: int  # byte offset just past the value


class ModelScanner:
    """Incremental scan of a JSON object for its top-level `model` member.

    `feed` each chunk; after each call `token` holds the first top-level `model` value once it
    has arrived in full. `done` is True when the scan can learn nothing more: the model was
    found, the object ended without one, or the body is not a JSON object. With `last=True`
    the scan continues to the end of the object and keeps the last `model` member, which is
    the one JSON parsers (msgspec, Python's json, vLLM) use when a key repeats.
    """

    __slots__ = (
        "_buf",
        "_depth",
        "_in_string",
        "_key_is_model",
        "_last",
        "_pos",
        "_state",
        "_value_start",
        "token",
    )

    def __init__(self, *, last: bool = False) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._state = _State.START
        self._last = last
        self._key_is_model = False
        self._value_start = 0
        self._depth = 0
        self._in_string = False
        self.token: ModelToken | None = None

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def scanned(self) -> int:
        """Bytes seen so far."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> ModelToken | None:
        """Add the next bytes of the body; returns `token` (None while still unknown)."""
        if self._state is _State.DONE:
            return self.token
        self._buf += chunk
        self._run()
        return self.token

    def _finish(self) -> None:
        self._state = _State.DONE
        self._buf = bytearray()  # nothing more to look at: let the bytes go

    # A small state machine; each step either advances or returns to wait for more bytes.
    def _run(self) -> None:
        buf = self._buf
        n = len(buf)
        while self._state is not _State.DONE:
            state = self._state
            if state is _State.SKIP_STRING:
                end = string_end(buf, self._pos)
                if end < 0:
                    self._pos = n
                    return
                self._pos = end
                self._state = _State.AFTER_VALUE
                continue
            if state is _State.SKIP_NESTED:
                if not self._skip_nested(buf):
                    return
                self._state = _State.AFTER_VALUE
                continue
            if state is _State.SKIP_SCALAR:
                m = _SCALAR_END.search(buf, self._pos)
                if m is None:
                    self._pos = n
                    return
                self._pos = m.start()
                self._state = _State.AFTER_VALUE
                continue
            pos = _skip_ws(buf, self._pos)
            self._pos = pos
            if pos >= n:
                return
            c = buf[pos]
            if state is _State.START:
                if c != 0x7B:  # "{"
                    self._finish()  # not an object: the full parse will say so
                    return
                self._pos = pos + 1
                self._state = _State.KEY
            elif state is _State.KEY:
                if c == 0x7D:  # "}": empty object or trailing comma; either way, the end
                    self._finish()
                    return
                if c != 0x22:  # '"'
                    self._finish()
                    return
                end = string_end(buf, pos + 1)
                if end < 0:
                    return  # the key is still arriving; rescan it from its quote next time
                raw = bytes(buf[pos + 1 : end - 1])
                self._key_is_model = raw == _MODEL_KEY or (
                    b"\\" in raw and _decode_string(buf[pos:end]) == "model"
                )
                self._pos = end
                self._state = _State.COLON
            elif state is _State.COLON:
                if c != 0x3A:  # ":"
                    self._finish()
                    return
                self._pos = pos + 1
                self._state = _State.VALUE
            elif state is _State.VALUE:
                self._value_start = pos
                if c == 0x22:  # a string
                    if self._key_is_model:
                        end = string_end(buf, pos + 1)
                        if end < 0:
                            return  # wait for the whole value
                        if self._found(_decode_string(buf[pos:end]), pos, end):
                            return
                        self._pos = end
                        self._state = _State.AFTER_VALUE
                    else:
                        self._pos = pos + 1
                        self._state = _State.SKIP_STRING
                elif c in (0x7B, 0x5B):  # "{" or "["
                    self._pos = pos + 1
                    self._depth = 1
                    self._in_string = False
                    self._state = _State.SKIP_NESTED
                else:
                    self._pos = pos
                    self._state = _State.SKIP_SCALAR
            elif state is _State.AFTER_VALUE:
                # `model` was an object, array, number, bool or null: known, not a string.
                if (
                    self._key_is_model
                    and buf[self._value_start] != 0x22
                    and self._found(None, self._value_start, pos)
                ):
                    return
                self._key_is_model = False
                if c == 0x2C:  # ","
                    self._pos = pos + 1
                    self._state = _State.KEY
                else:  # "}" ends the object; anything else is for the full parse to reject
                    self._finish()
                    return

    def _found(self, value: str | None, start: int, end: int) -> bool:
        """Record a `model` value; True when the scan is over."""
        self.token = ModelToken(value, start, end)
        self._key_is_model = False
        if not self._last:
            self._finish()
            return True
        return False

    def _skip_nested(self, buf: bytearray) -> bool:
        """Advance through a nested object/array; True once its closing bracket is consumed."""
        pos = self._pos
        depth = self._depth
        while True:
            if self._in_string:
                end = string_end(buf, pos)
                if end < 0:
                    self._pos, self._depth = len(buf), depth
                    return False
                pos = end
                self._in_string = False
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                self._pos, self._depth = len(buf), depth
                return False
            c = buf[m.start()]
            pos = m.end()
            if c == 0x22:
                self._in_string = True
            elif c in (0x7B, 0x5B):
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    self._pos, self._depth = pos, 0
                    return True


def _skip_ws(buf: bytearray, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in _WS:
        pos += 1
    return pos


def string_end(buf: bytes | bytearray, pos: int) -> int:
    """Offset just past the closing quote of a string whose content starts at `pos`, or -1."""
    while True:
        q = buf.find(b'"', pos)
        if q < 0:
            return -1
        # The quote is escaped when an odd number of backslashes precede it.
        k = q - 1
        while buf[k] == 0x5C:  # "\\"
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q + 1
        pos = q + 1


def _decode_string(raw: bytes | bytearray) -> str | None:
    """A JSON string token (quotes included) as text; None when it is not valid JSON."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def find_model(body: bytes, *, last: bool = True) -> ModelToken | None:
    """The top-level `model` member of a complete body (the last one by default)."""
    scanner = ModelScanner(last=last)
    scanner.feed(body)
    return scanner.token
