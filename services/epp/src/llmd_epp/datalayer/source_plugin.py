"""`metrics-data-source`: where and how often each endpoint's metrics are read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmd_epp.scheduling.framework import Handle, Plugin
from llmd_epp.scheduling.registry import Duration, PluginParams, register

DEFAULT_REFRESH_INTERVAL = 0.05


@register()
class MetricsDataSource(Plugin):
    TYPE = "metrics-data-source"

    class Params(PluginParams):
        scheme: Literal["http", "https"] = "http"
        path: str = Field(default="/metrics", pattern=r"^/")
        insecureSkipVerify: bool = True
        # Ours (upstream sets it with the --refresh-metrics-interval flag).
        refreshInterval: Duration = Field(default=DEFAULT_REFRESH_INTERVAL, gt=0)

    def __init__(
        self,
        name: str = "",
        scheme: str = "http",
        path: str = "/metrics",
        insecure_skip_verify: bool = True,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        super().__init__(name)
        self.scheme = scheme
        self.path = path
        self.insecure_skip_verify = insecure_skip_verify
        self.refresh_interval = refresh_interval

    @classmethod
    def create(
        cls, name: str, params: MetricsDataSource.Params, handle: Handle
    ) -> MetricsDataSource:
        return cls(
            name, params.scheme, params.path, params.insecureSkipVerify, params.refreshInterval
        )

    def url(self, host_port: str) -> str:
        return f"{self.scheme}://{host_port}{self.path}"
