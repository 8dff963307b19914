"""The scheduling core: pure (no I/O, time passed in), drivable from a simulator.

from llmd_epp.pickerconfig import load_picker_config
cfg = load_picker_config(yaml_text, seed=1)
result = cfg.scheduler.schedule(request, endpoints, now)
cfg.scheduler.pre_request(request, result, now)
...
cfg.scheduler.response_complete(request, result.primary.key, later, usage)
"""

from llmd_epp.scheduling.framework import (
    CycleState,
    EndpointListener,
    Filter,
    Handle,
    Picker,
    Plugin,
    PrepareData,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseHeaders,
    Scorer,
)
from llmd_epp.scheduling.profile import SchedulerProfile
from llmd_epp.scheduling.registry import ConfigError, PluginParams, register, registered_types
from llmd_epp.scheduling.scheduler import Scheduler
from llmd_epp.scheduling.types import (
    DATA_PARALLEL_HEADER,
    DP_RANK_HEADER,
    PREFILLER_HEADER,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    ProfileResult,
    SchedulingError,
    SchedulingResult,
)

__all__ = [
    "DATA_PARALLEL_HEADER",
    "DP_RANK_HEADER",
    "PREFILLER_HEADER",
    "ConfigError",
    "CycleState",
    "Endpoint",
    "EndpointListener",
    "EndpointMetrics",
    "Filter",
    "Handle",
    "LLMRequest",
    "Picker",
    "Plugin",
    "PluginParams",
    "PreRequest",
    "PrepareData",
    "ProfileHandler",
    "ProfileResult",
    "ResponseComplete",
    "ResponseHeaders",
    "Scheduler",
    "SchedulerProfile",
    "SchedulingError",
    "SchedulingResult",
    "Scorer",
    "register",
    "registered_types",
]
