"""`llmd`: the stack's command line.

Subcommands register themselves in `_SUBCOMMANDS`; each gets its own parser and returns an exit
code: `llmd up` (the local stack), `llmd gateway` (the dev gateway alone), `llmd bench` (the
routing benchmark). Registration is cheap; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from llmd import __version__

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _register_gateway(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gateway",
        help="run the dev gateway alone (the local stack's stand-in for Envoy)",
        description="The dev gateway: BBR and the pool's EPP over ext_proc, then the engine. "
        "A test harness, not a product: in a cluster Envoy takes its place.",
    )
    p.add_argument("--config", required=True, help="gateway YAML (see llmd.gateway.config)")
    p.add_argument("--port", type=int, help="override the config's port")
    p.add_argument("--log-level", default="info")
    p.set_defaults(handler=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    from llmd.gateway.__main__ import main as gateway_main

    argv = ["--config", args.config, "--log-level", args.log_level]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    return gateway_main(argv)


def _register_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from llmd.local.up import register

    register(sub)


def _register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from llmd.bench.cli import register

    register(sub)


# Each entry adds one subparser and sets `handler` in its defaults.
_SUBCOMMANDS: list[Registrar] = [_register_up, _register_gateway, _register_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmd",
        description="llm-d in Python: cache-aware routing in front of vLLM engines.",
    )
    parser.add_argument("--version", action="version", version=f"llmd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)
