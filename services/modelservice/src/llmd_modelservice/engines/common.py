"""Pieces every engine shares: hash settings, user overrides."""

from __future__ import annotations

from llmd_modelservice.engines.context import ReplicaContext


def base_env(ctx: ReplicaContext) -> dict[str, str]:
    # Block hashes (NONE_HASH seed) must agree on every replica and in the kvmanager.
    return {"PYTHONHASHSEED": ctx.ms.spec.engine.python_hash_seed}


def user_overrides(ctx: ReplicaContext) -> tuple[list[str], dict[str, str]]:
    eng = ctx.ms.spec.engine
    args = [*eng.extra_args, *ctx.group.extra_args]
    env = {**eng.env, **ctx.group.env}
    return args, env


def launcher(ctx: ReplicaContext, default: list[str]) -> list[str]:
    cmd = ctx.ms.spec.engine.command
    return list(cmd) if cmd else list(default)
