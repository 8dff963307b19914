"""What a processor decides about one side (request or response) of an exchange."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.contracts import ext_proc


@dataclass(slots=True)
class Reply:
    """A decision, independent of how Envoy's body mode makes us deliver it.

    `ExtProcStream` turns it into the right messages: header mutations ride on the headers
    response, or on the body response in BUFFERED mode; a replaced body becomes a body mutation
    or a streamed body; `immediate` ends the exchange with a local reply.
    """

    set_headers: Mapping[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    clear_route_cache: bool = False
    # Namespaces of `ProcessingResponse.dynamic_metadata`, e.g. {"envoy.lb": {...}}.
    dynamic_metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A new body; None keeps the body as it is.
    body: bytes | None = None
    immediate: ext_proc.ProcessingResponse | None = None

    @property
    def mutates_headers(self) -> bool:
        return bool(self.set_headers or self.remove_headers)


CONTINUE = Reply()
