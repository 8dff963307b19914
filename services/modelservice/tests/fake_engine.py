"""A tiny real HTTP engine for the supervisor's integration tests (stand-in until llmd-sim).

It takes vLLM-style flags (unknown ones are ignored), serves `/health`, `/metrics` (vLLM's
in-flight gauges), `/v1/models` and a `/v1/completions` that can be told to be slow, and can be
told to fail or hang its health check. It appends JSON lines describing what happened to
`$FAKE_ENGINE_STATE_DIR/<port>.jsonl` so tests can assert on argv, env and shutdown.

Environment knobs: FAKE_ENGINE_HEALTH=ok|fail|hang, FAKE_ENGINE_FAIL_AFTER=<n healthy probes>,
FAKE_ENGINE_STARTUP_DELAY=<seconds>. `POST /control {"health": "...", "exit": code}` at runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.in_flight = 0
        self.health = os.environ.get("FAKE_ENGINE_HEALTH", "ok")
        self.fail_after = int(os.environ.get("FAKE_ENGINE_FAIL_AFTER", "-1"))
        self.ready_at = time.monotonic() + float(os.environ.get("FAKE_ENGINE_STARTUP_DELAY", "0"))
        self.healthy_probes = 0
        d = os.environ.get("FAKE_ENGINE_STATE_DIR")
        self.record_path = Path(d) / f"{args.port}.jsonl" if d else None

    def record(self, **event: Any) -> None:
        if self.record_path is None:
            return
        event.update(pid=os.getpid(), t=time.time())
        with self.record_path.open("a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def do_GET(self) -> None:
            if self.path == "/health":
                mode = state.health
                if mode == "hang":
                    time.sleep(3600)
                if time.monotonic() < state.ready_at or mode == "fail":
                    self._send(503, b"")
                    return
                state.healthy_probes += 1
                if 0 <= state.fail_after < state.healthy_probes:
                    state.health = "fail"
                self._send(200, b"")
            elif self.path == "/metrics":
                name = state.args.served_model_name[0]
                with state.lock:
                    n = state.in_flight
                text = (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f'vllm:num_requests_running{{model_name="{name}",engine="0"}} {n}\n'
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="{name}",engine="0"}} 0\n'
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            elif self.path == "/v1/models":
                self._json(200, {"data": [{"id": n} for n in state.args.served_model_name]})
            else:
                self._send(404, b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/control":
                if "health" in body:
                    state.health = body["health"]
                self._json(200, {"ok": True})
                if "exit" in body:
                    state.record(event="exit", code=body["exit"])
                    os._exit(int(body["exit"]))
                return
            if self.path == "/v1/completions":
                with state.lock:
                    state.in_flight += 1
                try:
                    time.sleep(float(body.get("delay", 0)))
                    self._json(
                        200,
                        {
                            "object": "text_completion",
                            "model": body.get("model"),
                            "port": state.args.port,
                            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                        },
                    )
                finally:
                    with state.lock:
                        state.in_flight -= 1
                return
            self._send(404, b"")

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="fake")
    p.add_argument("--served-model-name", nargs="+", default=None)
    args, _unknown = p.parse_known_args()
    if not args.served_model_name:
        args.served_model_name = [args.model]
    state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True
    state.record(
        event="start",
        argv=sys.argv[1:],
        env={k: v for k, v in os.environ.items() if k in ("PYTHONHASHSEED",) or "VLLM" in k},
    )

    def on_term(signum: int, frame: Any) -> None:
        with state.lock:
            n = state.in_flight
        state.record(event="sigterm", in_flight=n)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server.serve_forever()


if __name__ == "__main__":
    main()
