"""`llmd-sim` command lines: vLLM's flags plus the simulator's own (`--mode`, ...)."""

from __future__ import annotations

from llmd_modelservice.engines.common import base_env, launcher, user_overrides
from llmd_modelservice.engines.context import EngineCommand, ReplicaContext
from llmd_modelservice.kvconfig import to_json


def build_sim(ctx: ReplicaContext) -> EngineCommand:
    s = ctx.ms.spec
    eng = s.engine
    par = ctx.group.parallelism
    argv = launcher(ctx, ["llmd-sim"])
    argv += ["--model", s.model.name, "--served-model-name", *ctx.ms.served_names]
    argv += ["--port", str(ctx.port)]
    if eng.max_num_seqs:
        argv += ["--max-num-seqs", str(eng.max_num_seqs)]
    argv += ["--block-size", str(eng.block_size)]
    argv += ["--prefix-caching-hash-algo", eng.prefix_caching_hash_algo]
    if par.data > 1:
        argv += ["--data-parallel-size", str(par.data)]
    if ctx.kv_events is not None:
        argv += ["--kv-events-config", to_json(ctx.kv_events)]
    if ctx.kv_transfer is not None:
        argv += ["--kv-transfer-config", to_json(ctx.kv_transfer)]
    if s.loras or s.max_loras:
        argv += ["--max-loras", str(s.max_loras or len(s.loras))]
        if s.loras:
            argv += ["--lora-modules", *(f"{lo.name}={lo.path}" for lo in s.loras)]
    sim = eng.sim
    if sim.mode:
        argv += ["--mode", sim.mode]
    if sim.latency_profile:
        argv += ["--latency-profile", sim.latency_profile]
    if sim.time_scale is not None:
        argv += ["--time-scale", f"{sim.time_scale:g}"]
    env = base_env(ctx)
    env.update(ctx.extra_env)
    extra_args, extra_env = user_overrides(ctx)
    env.update(extra_env)
    return EngineCommand(argv + extra_args, env)
