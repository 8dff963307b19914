"""gRPC health on its own port, as upstream's EPP answers it: `liveness` and "" while the process
runs; `readiness` and the ext_proc service name once the configuration is loaded and the
endpoint source has delivered its first view; everything NOT_SERVING once draining."""

from __future__ import annotations

from llmd_sdk.contracts import EXT_PROC_SERVICE
from llmd_sdk.health import HealthServicer, HealthState


def epp_health() -> tuple[HealthState, HealthServicer]:
    state = HealthState([EXT_PROC_SERVICE])
    return state, HealthServicer(state)
