"""Regenerates the Python code of the SDK's own `.proto` files.

`python -m llmd_sdk.contracts.codegen [OUT_DIR]` compiles every proto under `libs/llmd_sdk/proto`
with grpcio-tools into `OUT_DIR` (default: the committed `contracts/gen`). The generated modules
import each other as `llmd.kvindex.v1...`, which would collide with the root `llmd` package, so the
imports are rewritten under `llmd_sdk.contracts.gen`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[3] / "proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
GEN_PACKAGE = "llmd_sdk.contracts.gen"
_IMPORT = re.compile(r"^from (llmd(?:\.\w+)*) import", re.MULTILINE)


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def generate(out_dir: Path = GEN_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto into `out_dir`; returns the files written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(proto_root)) for p in proto_files(proto_root)),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    written: list[Path] = []
    for path in sorted(out_dir.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = _IMPORT.sub(lambda m: f"from {GEN_PACKAGE}.{m.group(1)} import", path.read_text())
        path.write_text(text)
        written.append(path)
    for folder in {p.parent for p in written} | {out_dir}:
        while folder != out_dir.parent:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
                written.append(init)
            folder = folder.parent
    return sorted(set(written))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GEN_DIR
    for f in generate(target):
        print(f)
