"""Static endpoints: a flag list (`ip:port,ip:port`) or a YAML file, re-read when it changes.

endpoints:
- address: 10.0.0.7
  port: 8000            # or ports: [8000, 8001] (one endpoint per data-parallel rank)
  name: default/vllm-0  # optional
  labels: {llm-d.ai/role: decode}
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.scheduling.registry import ConfigError, validation_line
from llmd_epp.scheduling.types import Endpoint

SOURCE = "static"


class StaticEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    ports: list[int] = Field(default_factory=list)
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_port(self) -> StaticEndpoint:
        if self.port is None and not self.ports:
            raise ValueError("port or ports is required")
        if any(not 1 <= p <= 65535 for p in self.ports):
            raise ValueError("ports must be between 1 and 65535")
        return self

    def endpoints(self) -> list[Endpoint]:
        ports = self.ports or [self.port or 0]
        host = f"[{self.address}]" if ":" in self.address else self.address
        return [
            Endpoint(
                key=f"{host}:{p}",
                address=self.address,
                port=p,
                labels=dict(self.labels),
                name=self.name,
                rank=rank,
            )
            for rank, p in enumerate(ports)
        ]


class StaticFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[StaticEndpoint] = Field(default_factory=list)


def parse_endpoint_list(text: str) -> list[Endpoint]:
    """`ip:port,ip:port` (whitespace allowed)."""
    out = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--endpoints[{i}]: {item!r} is not ip:port")
        out.append(Endpoint.at(item))
    return out


def parse_endpoints_file(text: str, source: str) -> list[Endpoint]:
    try:
        doc: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(doc, list):
        doc = {"endpoints": doc}
    try:
        parsed = StaticFile.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_line(exc, '').lstrip('.')}") from None
    return [ep for item in parsed.endpoints for ep in item.endpoints()]


class StaticSource:
    """Feeds the datastore from a fixed list, or from a file it polls for changes."""

    def __init__(
        self, endpoints: list[Endpoint] | None = None, path: str | None = None, poll: float = 0.5
    ) -> None:
        self.fixed = endpoints or []
        self.path = Path(path) if path else None
        self.poll = poll
        self._mtime: float | None = None

    def load(self) -> list[Endpoint]:
        eps = list(self.fixed)
        if self.path is not None:
            eps.extend(parse_endpoints_file(self.path.read_text(), str(self.path)))
        return eps

    def prime(self, store: Datastore) -> None:
        """The first view, synchronously (start-up errors surface before serving)."""
        if self.path is not None:
            try:
                self._mtime = os.stat(self.path).st_mtime
            except OSError as exc:
                raise ConfigError(
                    f"--endpoints-file: cannot read {self.path}: {exc.strerror}"
                ) from None
        store.replace(self.load(), SOURCE)

    async def run(self, store: Datastore) -> None:
        if self.path is None:
            return
        while True:
            await asyncio.sleep(self.poll)
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError:
                continue
            if mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                store.replace(self.load(), SOURCE)
            except (ConfigError, OSError):
                continue  # keep the last good view; the next edit may fix it
