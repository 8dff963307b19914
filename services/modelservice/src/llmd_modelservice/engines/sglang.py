"""`python -m sglang.launch_server` command lines (planned even where SGLang is not installed).

SGLang serves one name (`--served-model-name` takes a single value), pages its KV cache in
`--page-size` tokens and publishes KV events with the same `--kv-events-config` JSON as vLLM.
P/D uses `--disaggregation-mode prefill|decode` with the NIXL transfer backend.
"""

from __future__ import annotations

from llmd_modelservice.accelerators import GPU_LIKE, tuning_env, visibility_env
from llmd_modelservice.engines.common import base_env, launcher, user_overrides
from llmd_modelservice.engines.context import EngineCommand, ReplicaContext
from llmd_modelservice.kvconfig import to_json


def build_sglang(ctx: ReplicaContext) -> EngineCommand:
    s = ctx.ms.spec
    par = ctx.group.parallelism
    eng = s.engine
    argv = launcher(ctx, ["python", "-m", "sglang.launch_server"])
    argv += ["--model-path", s.model.name, "--host", ctx.host, "--port", str(ctx.port)]
    argv += ["--served-model-name", ctx.ms.served_names[0]]
    if s.model.dtype != "auto":
        argv += ["--dtype", s.model.dtype]
    if s.model.max_model_len:
        argv += ["--context-length", str(s.model.max_model_len)]
    if s.model.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += ["--tp-size", str(par.tensor)]
    if par.data > 1:
        argv += ["--dp-size", str(par.data)]
    if par.expert:
        argv += ["--ep-size", str(par.tensor * par.data)]
    if ctx.accelerator in GPU_LIKE:
        argv += ["--mem-fraction-static", f"{eng.gpu_memory_utilization:g}"]
    if ctx.accelerator in ("cpu", "intel-xpu"):
        argv += ["--device", "cpu" if ctx.accelerator == "cpu" else "xpu"]
    argv += ["--page-size", str(eng.block_size)]
    if eng.max_num_seqs:
        argv += ["--max-running-requests", str(eng.max_num_seqs)]
    argv.append("--enable-metrics")
    if ctx.kv_events is not None:
        argv += ["--kv-events-config", to_json(ctx.kv_events)]
    if ctx.group.role in ("prefill", "decode"):
        argv += ["--disaggregation-mode", ctx.group.role]
        argv += ["--disaggregation-transfer-backend", "nixl"]
    if s.loras or s.max_loras:
        argv.append("--enable-lora")
        if s.loras:
            argv += ["--lora-paths", *(f"{lo.name}={lo.path}" for lo in s.loras)]
        argv += ["--max-loras-per-batch", str(s.max_loras or len(s.loras))]
    env = base_env(ctx)
    env.update(visibility_env(ctx.accelerator, ctx.devices))
    env.update(tuning_env(ctx.accelerator, ctx.device_architecture))
    env.update(ctx.extra_env)
    extra_args, extra_env = user_overrides(ctx)
    env.update(extra_env)
    return EngineCommand(argv + extra_args, env)
