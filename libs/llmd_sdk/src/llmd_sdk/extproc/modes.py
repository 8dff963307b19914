"""Body processing modes, named as Envoy names them."""

from __future__ import annotations

import enum

from llmd_sdk.contracts import processing_mode

_PM = processing_mode.ProcessingMode


class BodyMode(enum.IntEnum):
    """`ProcessingMode.BodySendMode`."""

    NONE = _PM.NONE
    STREAMED = _PM.STREAMED
    BUFFERED = _PM.BUFFERED
    BUFFERED_PARTIAL = _PM.BUFFERED_PARTIAL
    FULL_DUPLEX_STREAMED = _PM.FULL_DUPLEX_STREAMED

    @classmethod
    def parse(cls, value: str | int | BodyMode) -> BodyMode:
        if isinstance(value, str):
            name = value.strip().upper().replace("-", "_")
            if name == "SKIP":
                name = "NONE"
            try:
                return cls[name]
            except KeyError:
                raise ValueError(
                    f"body mode: {value!r} is not one of {', '.join(m.name for m in cls)}"
                ) from None
        return cls(value)


class HeaderMode(enum.IntEnum):
    """`ProcessingMode.HeaderSendMode`."""

    DEFAULT = _PM.DEFAULT
    SEND = _PM.SEND
    SKIP = _PM.SKIP
