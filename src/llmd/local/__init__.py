"""The local stack as a library: configuration, plan of processes, supervisor.

`llmd up` runs it from `examples/local.yaml`; the e2e tests and the benchmarks run it with free
ports (`StackConfig.with_free_ports()`) through `LocalStack`.
"""

from llmd.local.config import ConfigError, StackConfig, load_config, parse_config
from llmd.local.logs import LogSink
from llmd.local.plan import Plan, build_plan
from llmd.local.ports import PortInUseError, free_port, free_ports
from llmd.local.probes import GrpcHealthProbe, HttpProbe
from llmd.local.process import ProcessSpec, State
from llmd.local.stack import LocalStack
from llmd.local.supervisor import StartError, Supervisor

__all__ = [
    "ConfigError",
    "GrpcHealthProbe",
    "HttpProbe",
    "LocalStack",
    "LogSink",
    "Plan",
    "PortInUseError",
    "ProcessSpec",
    "StackConfig",
    "StartError",
    "State",
    "Supervisor",
    "build_plan",
    "free_port",
    "free_ports",
    "load_config",
    "parse_config",
]
