"""`llmd`: the stack's command line.

Subcommands register themselves in `_SUBCOMMANDS`; each gets its own parser and returns an exit
code. `llmd up` (local stack) and `llmd bench` (routing benchmark) arrive with their issues.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from llmd import __version__

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# Each entry adds one subparser and sets `handler` in its defaults.
_SUBCOMMANDS: list[Registrar] = []


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
