"""`vllm serve` command lines per accelerator (vLLM v0.33 flags and environment).

GPU-like accelerators take `--gpu-memory-utilization`; the CPU backend sizes its KV cache from
`VLLM_CPU_KVCACHE_SPACE` instead and binds OpenMP threads with `VLLM_CPU_OMP_THREADS_BIND`.
Multi-process tensor parallelism on CPU and XPU uses `--distributed-executor-backend mp` (XPU
would otherwise start Ray). Multi-node data parallel flags are added by `render`.
"""

from __future__ import annotations

from llmd_modelservice.accelerators import GPU_LIKE, tuning_env, visibility_env
from llmd_modelservice.engines.common import base_env, launcher, user_overrides
from llmd_modelservice.engines.context import EngineCommand, ReplicaContext
from llmd_modelservice.kvconfig import to_json


def build_vllm(ctx: ReplicaContext) -> EngineCommand:
    s = ctx.ms.spec
    par = ctx.group.parallelism
    eng = s.engine
    argv = [*launcher(ctx, ["vllm", "serve"]), s.model.name]
    argv += ["--host", ctx.host, "--port", str(ctx.port)]
    argv += ["--served-model-name", *ctx.ms.served_names]
    if s.model.dtype != "auto":
        argv += ["--dtype", s.model.dtype]
    if s.model.max_model_len:
        argv += ["--max-model-len", str(s.model.max_model_len)]
    if s.model.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += ["--tensor-parallel-size", str(par.tensor)]
    if par.data > 1:
        argv += ["--data-parallel-size", str(par.data)]
    if par.expert:
        argv.append("--enable-expert-parallel")
    if ctx.accelerator in GPU_LIKE:
        argv += ["--gpu-memory-utilization", f"{eng.gpu_memory_utilization:g}"]
    if par.tensor > 1 and ctx.accelerator in ("cpu", "intel-xpu"):
        argv += ["--distributed-executor-backend", "mp"]
    argv += ["--block-size", str(eng.block_size)]
    if eng.max_num_seqs:
        argv += ["--max-num-seqs", str(eng.max_num_seqs)]
    if s.kv_cache.dtype != "auto":
        argv += ["--kv-cache-dtype", s.kv_cache.dtype]
    argv += ["--prefix-caching-hash-algo", eng.prefix_caching_hash_algo]
    if ctx.kv_events is not None:
        argv += ["--kv-events-config", to_json(ctx.kv_events)]
    if ctx.kv_transfer is not None:
        argv += ["--kv-transfer-config", to_json(ctx.kv_transfer)]
    if s.loras or s.max_loras:
        argv.append("--enable-lora")
        argv += ["--max-loras", str(s.max_loras or len(s.loras))]
        if s.loras:
            argv += ["--lora-modules", *(f"{lo.name}={lo.path}" for lo in s.loras)]

    env = base_env(ctx)
    env.update(visibility_env(ctx.accelerator, ctx.devices))
    env.update(tuning_env(ctx.accelerator, ctx.device_architecture))
    if ctx.accelerator == "cpu":
        if ctx.cpu_kv_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(ctx.cpu_kv_gib)
        if ctx.cpu_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ctx.cpu_bind
    if ctx.kv_transfer is not None and ctx.nixl_port is not None:
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = ctx.advertise
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(ctx.nixl_port)
    env.update(ctx.extra_env)
    extra_args, extra_env = user_overrides(ctx)
    env.update(extra_env)
    return EngineCommand(argv + extra_args, env)
