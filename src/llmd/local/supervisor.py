"""The supervisor: start components in stages, wait for readiness, restart, stop in order.

    sup = Supervisor(specs, sink)
    await sup.start(timeout=60)      # StartError (one line) if a component fails to come up
    ...                              # sup.failed is set if a component keeps dying
    await sup.stop()                 # by stop_rank: gateway first, engines' supervisor last

Each component is its own process group (one `killpg` reaches whatever it forks) and gets a
parent-death signal, so nothing outlives the supervisor even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from llmd.local.logs import LogSink
from llmd.local.process import Child, ProcessSpec, State

SELF = "llmd"


class StartError(RuntimeError):
    """A component did not come up; the message is one line."""


class Supervisor:
    def __init__(self, specs: Sequence[ProcessSpec], sink: LogSink | None = None) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("process names must be unique")
        self.children = {s.name: Child(s) for s in specs}
        self.sink = sink if sink is not None else LogSink(level="warning")
        self.sink.width = max([self.sink.width, *(len(n) + 4 for n in names)])
        self.failed = asyncio.Event()
        self.failure = ""
        self._stopping = False
        self._http: httpx.AsyncClient | None = None
        self._tailers: list[asyncio.Task[None]] = []

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    # ------------------------------------------------------------------ start
    async def start(self, timeout: float = 60.0) -> None:
        """Start every stage in turn; each waits until all of its components are ready."""
        self._http = httpx.AsyncClient()
        deadline = time.monotonic() + timeout
        by_stage = itertools.groupby(
            sorted(self.children.values(), key=lambda c: c.spec.stage), key=lambda c: c.spec.stage
        )
        try:
            for _, group in by_stage:
                children = list(group)
                for child in children:
                    await self._spawn(child)
                await asyncio.gather(*(self._await_ready(c, deadline) for c in children))
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self, child: Child) -> None:
        spec = child.spec
        child.state = State.STARTING
        try:
            proc = await child.spawn()
        except OSError as exc:
            child.state = State.FAILED
            raise StartError(f"{spec.name}: cannot start {spec.argv[0]}: {exc.strerror}") from None
        self.sink.log(SELF, "debug", "started", process=spec.name, pid=proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        child.tasks = [
            asyncio.create_task(self._pump(spec.name, proc.stdout)),
            asyncio.create_task(self._pump(spec.name, proc.stderr)),
            asyncio.create_task(self._watch(child, proc)),
        ]
        if spec.log_dir is not None and not any(
            t.get_name() == f"tail {spec.name}" for t in self._tailers
        ):
            self._tailers.append(
                asyncio.create_task(
                    self._tail_dir(spec.log_dir, spec.log_dir_prefix or spec.name),
                    name=f"tail {spec.name}",
                )
            )

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: take what is there
                raw = await stream.read(1 << 16)
            if not raw:
                return
            self.sink.line(name, raw.decode("utf-8", "replace"))

    async def _await_ready(self, child: Child, deadline: float) -> None:
        spec = child.spec
        assert self._http is not None
        why = "not probed yet"
        while True:
            if not child.running:
                await asyncio.sleep(0.05)  # let the pumps drain its last words
                rc = child.proc.returncode if child.proc else None
                child.state = State.FAILED
                words = self.sink.last_words(spec.name)
                raise StartError(
                    f"{spec.name} exited with code {rc} before it was ready"
                    + (f": {words}" if words else "")
                )
            if spec.probe is None:
                break
            result = await spec.probe.check(self._http)
            if result is None:
                break
            why = result
            if time.monotonic() > deadline:
                raise StartError(
                    f"{spec.name} was not ready in time ({spec.probe}: {why}); "
                    "raise startupTimeoutS in the config if this machine is slow"
                )
            await asyncio.sleep(0.1)
        child.state = State.READY
        self.sink.log(SELF, "info", "ready", process=spec.name, address=spec.address or None)

    # ------------------------------------------------------------ supervision
    async def _watch(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        child.returncode = rc
        if self._stopping or child.state in (State.STOPPING, State.STOPPED):
            return
        if child.state != State.READY:
            return  # still starting: `_await_ready` reports it
        spec = child.spec
        self.sink.log(
            SELF, "error", "process exited", process=spec.name, code=rc,
            last=self.sink.last_words(spec.name) or None,
        )  # fmt: skip
        child.signal_group(signal.SIGKILL)  # whatever it left behind
        if not spec.restart or child.restarts >= spec.max_restarts:
            child.state = State.FAILED
            child.reason = f"{spec.name} exited with code {rc}"
            self.failure = child.reason + (
                f" ({child.restarts} restarts)" if child.restarts else ""
            )
            self.failed.set()
            return
        child.restarts += 1
        child.state = State.RESTARTING
        delay = min(2.0 ** (child.restarts - 1), 10.0)
        self.sink.log(SELF, "warning", "restarting", process=spec.name, backoff_s=delay)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._spawn(child)
            await self._await_ready(child, time.monotonic() + 60.0)
        except StartError as exc:
            child.state = State.FAILED
            self.failure = str(exc)
            self.failed.set()

    async def _tail_dir(self, directory: Path, prefix: str) -> None:
        """Follow every `*.log` in `directory` (files appear as replicas start)."""
        follower = _DirFollower(directory)
        while True:
            for stem, line in await asyncio.to_thread(follower.read_new):
                self.sink.line(f"{prefix}/{stem}", line)
            if self._stopping and not any(c.running for c in self.children.values()):
                return
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Stop every component by `stop_rank` (lower first), TERM then KILL its group."""
        self._stopping = True
        order = sorted(self.children.values(), key=lambda c: c.spec.stop_rank)
        for _, group in itertools.groupby(order, key=lambda c: c.spec.stop_rank):
            await asyncio.gather(*(self._stop_one(c) for c in group))
        for task in self._tailers:
            task.cancel()
        for task in self._tailers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tailers.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _stop_one(self, child: Child) -> None:
        if child.proc is None:
            child.state = State.STOPPED
            return
        was_running = child.running
        child.state = State.STOPPING
        started = time.monotonic()
        rc = await child.terminate(child.spec.stop_timeout_s)
        for task in child.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2.0)
        child.state = State.STOPPED
        if was_running:
            self.sink.log(
                SELF, "info", "stopped", process=child.spec.name, code=rc,
                seconds=round(time.monotonic() - started, 2),
            )  # fmt: skip

    def states(self) -> list[tuple[str, str, str]]:
        """(component, address, state) for every child, in start order."""
        return [
            (c.spec.name, c.spec.address, c.state.value)
            for c in sorted(self.children.values(), key=lambda c: c.spec.stage)
        ]


class _DirFollower:
    """`tail -F` of every `*.log` in a directory, by whole lines (blocking: run in a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}

    def read_new(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        with contextlib.suppress(OSError):
            for path in sorted(self.directory.glob("*.log")):
                pos = self.offsets.get(path, 0)
                size = path.stat().st_size
                if size < pos:
                    pos = 0  # truncated or replaced
                if size == pos:
                    continue
                with path.open("rb") as f:
                    f.seek(pos)
                    data = self.partial.pop(path, b"") + f.read(1 << 20)
                    self.offsets[path] = f.tell()
                *lines, rest = data.split(b"\n")
                if rest:
                    self.partial[path] = rest
                out += [(path.stem, raw.decode("utf-8", "replace")) for raw in lines]
        return out
