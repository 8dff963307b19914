"""The dev gateway: Envoy's part in the local stack (BBR, route by model, EPP, forward)."""

from llmd.gateway.app import Gateway
from llmd.gateway.config import GatewayConfig, PoolRoute, ProcessorConfig

__all__ = ["Gateway", "GatewayConfig", "PoolRoute", "ProcessorConfig"]
