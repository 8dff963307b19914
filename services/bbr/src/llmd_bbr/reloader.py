"""Keeps the router's model table in step with the model file.

The file is polled (`os.stat`: mtime, ctime, size, inode), which also sees Kubernetes ConfigMap
volume updates (an atomic symlink swap, so the inode changes). A changed file is parsed off the
event loop and, when it loads, swapped in as a whole: a request sees the old table or the new one.
A file that does not load (bad YAML, a bad field, missing) keeps the previous table; the problem
is logged once, as one line, until the file changes again. A file that changes while it is read
is read again at the next poll; replace the file atomically (write elsewhere, rename over it, as
kubelet does) so that no poll can see half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmd_bbr.model_table import ModelTable, TableError, parse_table

Signature = tuple[int, int, int, int]


def read_table(path: Path) -> ModelTable:
    """Load the model file; `TableError` (one line) when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read: {exc}") from None
    try:
        return parse_table(text, str(path))
    except TableError as exc:
        raise TableError(f"{path}: {exc}") from None


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class ModelFileWatcher:
    """Polls one model file and hands each table that loads to `apply`."""

    def __init__(
        self,
        path: Path,
        apply: Callable[[ModelTable], None],
        *,
        interval: float = 1.0,
        log: Any = None,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        self._apply = apply
        self.interval = interval
        self._log = log
        self._on_result = on_result
        self._seen: Signature | None = None
        self._reported: str | None = None  # the last error logged, so it is logged once
        self.generation = 0  # tables applied
        self.failures = 0  # loads refused
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def load_initial(self) -> ModelTable:
        """Load at startup; a bad file is an error here (there is no previous table to keep)."""
        self._seen = _signature(self.path)
        table = read_table(self.path)
        self._applied(table)
        return table

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="bbr-model-file-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed (or `force`); True when a new table was applied."""
        sig = await asyncio.to_thread(_signature, self.path)
        if not force and sig == self._seen:
            return False
        try:
            table = await asyncio.to_thread(read_table, self.path)
            if await asyncio.to_thread(_signature, self.path) != sig:
                return False  # changed while we read it: take the next, settled version
        except TableError as exc:
            self._seen = sig
            self.failures += 1
            if self._on_result is not None:
                self._on_result(False)
            message = str(exc)
            if message != self._reported and self._log is not None:
                self._log.error("model file not loaded; keeping the previous table", error=message)
            self._reported = message
            self._notify()
            return False
        self._seen = sig
        self._applied(table)
        if self._log is not None:
            self._log.info("model file loaded", path=str(self.path), **table.summary())
        return True

    async def wait_for(self, predicate: Callable[[ModelFileWatcher], bool]) -> None:
        """Wait until `predicate(self)` holds (checked after every load attempt)."""
        while not predicate(self):
            event = self._changed
            await event.wait()

    def _applied(self, table: ModelTable) -> None:
        self._apply(table)
        self._reported = None
        self.generation += 1
        if self._on_result is not None:
            self._on_result(True)
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:  # never let the watcher die: the old table keeps serving
                if self._log is not None:
                    self._log.error("model file check failed", error=f"{type(exc).__name__}: {exc}")
