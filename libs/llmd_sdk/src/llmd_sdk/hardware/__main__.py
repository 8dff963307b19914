"""`python -m llmd_sdk.hardware`: print this machine's `HardwareProfile` as JSON.

    python -m llmd_sdk.hardware                  indented JSON
    python -m llmd_sdk.hardware --compact        one line
    python -m llmd_sdk.hardware --record DIR     also write what detection read as a fixture tree
                                                 (DIR/root, system.json, commands.json, nvml.json)
    python -m llmd_sdk.hardware --replay DIR     detect on a recorded machine instead of this one

Needs only pydantic (and nvidia-ml-py for NVML); no other SDK module is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llmd_sdk.hardware.detection import detect
from llmd_sdk.hardware.system import SystemView


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmd_sdk.hardware",
        description="Detect accelerators and the CPU of this machine; print the profile as JSON.",
    )
    parser.add_argument("--compact", action="store_true", help="print JSON on one line")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--record",
        metavar="DIR",
        type=Path,
        help="write the files, variables and command outputs detection used under DIR",
    )
    source.add_argument(
        "--replay", metavar="DIR", type=Path, help="detect on a machine recorded with --record"
    )
    args = parser.parse_args(argv)

    if args.replay is not None:
        try:
            view = SystemView.recorded(args.replay)
        except (OSError, ValueError) as exc:
            print(f"error: --replay {args.replay}: {exc}", file=sys.stderr)
            return 2
        profile = detect(view)
    elif args.record is not None:
        from llmd_sdk.hardware.recording import record_machine

        try:
            profile = record_machine(args.record)
        except OSError as exc:
            print(f"error: --record {args.record}: {exc}", file=sys.stderr)
            return 2
    else:
        profile = detect()

    try:
        print(profile.model_dump_json(indent=None if args.compact else 2), flush=True)
    except BrokenPipeError:  # `| head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
