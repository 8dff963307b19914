"""`LocalStack`: the whole stack as local processes, for `llmd up`, the e2e tests and benchmarks.

    cfg = load_config("examples/local.yaml").with_free_ports()
    async with LocalStack(cfg) as stack:
        httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=...)

`start()` checks the ports, writes the run directory, starts every component in stages, waits
until each is ready (every engine included) and sends one request through the gateway; `stop()`
stops them in order (gateway first, engines last) and checks that no port is left open.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from llmd.local.config import StackConfig
from llmd.local.logs import LogSink
from llmd.local.plan import MODELSERVICE, Plan, build_plan
from llmd.local.ports import check_ports, wait_port_closed
from llmd.local.replicas import Replica, list_replicas
from llmd.local.supervisor import StartError, Supervisor


class LocalStack:
    def __init__(
        self,
        config: StackConfig,
        *,
        sink: LogSink | None = None,
        run_dir: Path | None = None,
        source: str = "config",
        self_check: bool = True,
    ) -> None:
        self.config = config
        self.sink = sink if sink is not None else LogSink(level="warning")
        self._own_run_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="llmd-up-"))
        self.source = source
        self._self_check = self_check
        self.plan: Plan | None = None
        self.supervisor: Supervisor | None = None
        self.engines: list[Replica] = []

    @property
    def gateway_url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.config.gateway.port}"

    @property
    def modelservice_url(self) -> str:
        assert self.plan is not None
        return self.plan.modelservice_url

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.config
        check_ports(cfg.host, cfg.fixed_ports(), self.source)
        self.plan = build_plan(cfg, self.run_dir)
        self.supervisor = Supervisor(self.plan.processes, self.sink)
        await self.supervisor.start(timeout=cfg.startup_timeout_s)
        try:
            self.engines = await self.replicas()
            if self._self_check:
                await self.check_request()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.supervisor is None:
            return
        sup, self.supervisor = self.supervisor, None
        await sup.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------- queries
    async def replicas(self) -> list[Replica]:
        async with httpx.AsyncClient() as client:
            return await list_replicas(client, self.modelservice_url)

    def open_ports(self) -> list[tuple[str, int]]:
        """Configured ports (and engine ports seen) that still accept connections."""
        ports = [(f, p) for f, p in self.config.fixed_ports() if p]
        for r in self.engines:
            _, _, port = r.endpoint.rpartition(":")
            if port.isdigit():
                ports.append((f"engine {r.id}", int(port)))
        return [(f, p) for f, p in ports if not wait_port_closed(self.config.host, p)]

    def example_request(self) -> tuple[str, dict[str, Any]]:
        model = self.config.models[0].first_name
        return "/v1/chat/completions", {
            "model": model,
            "messages": [{"role": "user", "content": "Hello! What is llm-d?"}],
            "max_tokens": 16,
        }

    def curl(self) -> str:
        path, body = self.example_request()
        return (
            f"curl -s {self.gateway_url}{path} -H 'content-type: application/json' "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}"
        )

    async def check_request(self) -> None:
        """Send the README's request through the gateway; StartError unless it answers 200."""
        path, body = self.example_request()
        async with httpx.AsyncClient(timeout=30.0) as client:
            try:
                resp = await client.post(self.gateway_url + path, json=body)
            except httpx.HTTPError as exc:
                raise StartError(f"the first request through the gateway failed: {exc!r}") from None
        if resp.status_code != 200:
            raise StartError(
                f"the first request through the gateway answered {resp.status_code}: "
                f"{resp.text[:300]}"
            )

    def rows(self) -> list[tuple[str, str, str]]:
        """(component, address, state): the components, each engine after modelservice."""
        assert self.supervisor is not None
        out: list[tuple[str, str, str]] = []
        for name, address, state in self.supervisor.states():
            out.append((name, address, state))
            if name == MODELSERVICE:
                out += [(f"  engine {r.id}", r.endpoint, r.state) for r in self.engines]
        return out

    def table(self) -> str:
        rows = [("component", "address", "state"), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)
