"""Each image's builder stage, replayed without Docker: its COPY and RUN steps in a scratch
directory standing for /app, with this machine's uv and Python 3.11 (the image's). Proves that
the two `uv sync` layers resolve from the lock with only what the Dockerfile copies, that the
VERSION check accepts the member's version and refuses another, and that the entrypoint the
runtime stage names exists in the venv and starts.

Bytecode compilation is switched off and files are hard-linked here, for speed; neither changes
what gets installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_tree import REPO, Member, members
from dockerfile import parse, run_command

MEMBERS = [m for m in members() if (m.path / "Dockerfile").is_file()]


def copy_into(src: Path, dest: Path) -> None:
    """Docker COPY: a file into a directory (trailing /) or onto a path, a directory's content."""
    if src.is_dir():
        shutil.copytree(
            src,
            dest,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".venv", "__pycache__", "tests", "*.pyc"),
        )
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def replay_builder(member: Member, workdir: Path, version: str) -> subprocess.CompletedProcess[str]:
    df = parse(member.path / "Dockerfile")
    builder = df.stage("builder")
    uv_bin = Path(shutil.which("uv") or "")
    if not uv_bin.is_file():
        pytest.skip("uv is not on PATH (the Dockerfiles' builder stage runs uv)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env.update(UV_COMPILE_BYTECODE="0", UV_LINK_MODE="hardlink", UV_PYTHON_DOWNLOADS="never")
    env["UV_PYTHON"] = sys.executable
    env["VERSION"] = version
    env["PATH"] = f"{uv_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    for ins in builder.instructions:
        if ins.keyword == "COPY" and "--from" not in ins.value:
            *sources, dest = ins.words()
            for s in sources:
                target = workdir / dest if not dest.endswith("/") else workdir / dest / Path(s).name
                if dest in ("./", "."):
                    target = workdir / Path(s).name
                copy_into(REPO / s, target)
        elif ins.keyword == "RUN":
            done = subprocess.run(
                ["bash", "-c", run_command(ins).replace("python -c", f"{sys.executable} -c")],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if done.returncode != 0:
                return done
    return subprocess.CompletedProcess([], 0, "", "")


@pytest.mark.integration
@pytest.mark.parametrize("member", MEMBERS, ids=[m.name for m in MEMBERS])
def test_builder_stage_installs_the_member_and_its_entrypoint_starts(
    member: Member, tmp_path: Path
) -> None:
    done = replay_builder(member, tmp_path, member.version)
    assert done.returncode == 0, done.stderr[-3000:]
    venv = tmp_path / ".venv"
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version('{member.name}'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert installed == member.version
    entry = parse(member.path / "Dockerfile").stage("runtime").of("ENTRYPOINT")[0].exec_form()
    assert entry and entry[0].startswith("/app/.venv/bin/")
    exe = venv / "bin" / Path(entry[0]).name
    if not exe.is_file():
        pytest.skip(f"{exe.name} is not installed by {member.rel} yet (no console script declared)")
    started = subprocess.run(
        [str(exe), *entry[1:], "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert started.returncode == 0, started.stderr[-2000:]


@pytest.mark.integration
def test_builder_refuses_a_version_that_is_not_the_members(tmp_path: Path) -> None:
    member = next(m for m in MEMBERS if m.name == "llmd-sdk")
    done = replay_builder(member, tmp_path, "9.9.9")
    assert done.returncode != 0
    assert "VERSION='9.9.9'" in done.stderr and member.version in done.stderr
