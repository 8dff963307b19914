"""`session-affinity-scorer`: keeps a session on the endpoint that served it.

The response carries `x-session-token` (base64 of the serving endpoint); a request that sends it
back scores 1 on that endpoint and 0 elsewhere. `headerName` changes the header.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from llmd_epp.scheduling.framework import CycleState, Handle, ResponseHeaders, Scorer
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest

SESSION_TOKEN_HEADER = "x-session-token"


def encode_token(endpoint_key: str) -> str:
    return base64.urlsafe_b64encode(endpoint_key.encode()).decode()


def decode_token(token: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


@register()
class SessionAffinityScorer(Scorer, ResponseHeaders):
    TYPE = "session-affinity-scorer"

    class Params(PluginParams):
        headerName: str = SESSION_TOKEN_HEADER

    def __init__(self, name: str = "", header: str = SESSION_TOKEN_HEADER) -> None:
        super().__init__(name)
        self.header = header.lower()

    @classmethod
    def create(
        cls, name: str, params: SessionAffinityScorer.Params, handle: Handle
    ) -> SessionAffinityScorer:
        return cls(name, params.headerName or SESSION_TOKEN_HEADER)

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        token = request.headers.get(self.header)
        target = decode_token(token) if token else None
        if target is None:
            return [0.0] * len(endpoints)
        return [1.0 if e.key == target else 0.0 for e in endpoints]

    def response_headers(self, request: LLMRequest, served: str) -> dict[str, str]:
        return {self.header: encode_token(served)}
