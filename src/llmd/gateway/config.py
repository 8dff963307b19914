"""Configuration of the dev gateway: where BBR is, which pool serves which model."""

from __future__ import annotations

from llmd_sdk.extproc import BodyMode, FilterConfig, HeaderMode
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProcessorConfig(BaseModel):
    """One ext_proc processor and the Envoy filter settings it is reached with."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="host:port of the processor's ext_proc gRPC server")
    request_body_mode: str = "FULL_DUPLEX_STREAMED"
    response_body_mode: str = "NONE"
    response_header_mode: str = "SEND"
    send_body_without_waiting_for_header_response: bool = False
    failure_mode_allow: bool = False
    message_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a processor may take to answer a message; as in Envoy, not "
        "applied to a FULL_DUPLEX_STREAMED response body, whose pace is the upstream's",
    )

    @field_validator("request_body_mode", "response_body_mode")
    @classmethod
    def _body_mode(cls, value: str) -> str:
        return BodyMode.parse(value).name

    @field_validator("response_header_mode")
    @classmethod
    def _header_mode(cls, value: str) -> str:
        name = value.strip().upper()
        if name not in HeaderMode.__members__:
            raise ValueError(f"must be one of {', '.join(HeaderMode.__members__)}")
        return name

    def filter(self, name: str) -> FilterConfig:
        return FilterConfig(
            name=name,
            target=self.target,
            request_body_mode=BodyMode[self.request_body_mode],
            response_body_mode=BodyMode[self.response_body_mode],
            response_header_mode=HeaderMode[self.response_header_mode],
            send_body_without_waiting_for_header_response=(
                self.send_body_without_waiting_for_header_response
            ),
            failure_mode_allow=self.failure_mode_allow,
            message_timeout=self.message_timeout_s,
        )


class PoolRoute(BaseModel):
    """An InferencePool: the models routed to it and the EPP that picks its endpoints."""

    model_config = ConfigDict(extra="forbid")

    name: str
    models: list[str] = Field(min_length=1, description="X-Gateway-Model-Name values routed here")
    epp: ProcessorConfig


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    bbr: ProcessorConfig | None = None
    pools: list[PoolRoute] = Field(min_length=1)
    # Requests that name no model (GET /v1/models, /health) go to this pool, if set.
    default_pool: str | None = None
    # Header BBR writes the model name into (Envoy routes on it).
    model_header: str = "x-gateway-model-name"
    upstream_connect_timeout_s: float = Field(default=2.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    max_request_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    def route(self, model: str | None) -> PoolRoute | None:
        if model is None:
            return self.pool(self.default_pool) if self.default_pool else None
        for pool in self.pools:
            if model in pool.models:
                return pool
        return None

    def pool(self, name: str) -> PoolRoute | None:
        return next((p for p in self.pools if p.name == name), None)
