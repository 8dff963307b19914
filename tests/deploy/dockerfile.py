"""A small Dockerfile reader for the image checks: stages and instructions, no Docker engine needed.

Handles what our Dockerfiles use: parser directives and comments, backslash continuations,
`FROM image AS name`, JSON (exec) and shell forms. Not a general BuildKit parser (no heredocs).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the line, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/HEALTHCHECK CMD, or None for the shell form."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else ""
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return [str(x) for x in parsed]

    def words(self) -> list[str]:
        return shlex.split(self.value)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    directives: dict[str, str]
    global_args: list[Instruction]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path}: no stage {name!r}")


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$")


def parse(path: Path) -> Dockerfile:
    directives: dict[str, str] = {}
    logical: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    in_header = True
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if in_header:
            m = _DIRECTIVE.match(line)
            if m:
                directives[m.group(1).lower()] = m.group(2)
                continue
            in_header = False
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        logical.append((start, " ".join(b for b in buf if b)))
        buf = []
    if buf:
        raise ValueError(f"{path}: the last instruction ends with a continuation")

    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for n, text in logical:
        keyword, _, rest = text.partition(" ")
        ins = Instruction(keyword.upper(), rest.strip(), n)
        if ins.keyword == "FROM":
            words = ins.words()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{path}:{n}: {ins.keyword} before the first FROM")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, directives, global_args, stages)


def run_command(ins: Instruction) -> str:
    """A RUN's shell command without its --mount/--network options."""
    words = ins.value.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)
