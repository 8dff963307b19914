"""A stand-in component for the supervisor's tests: a real HTTP server in its own process.

    python child.py NAME PORT [--ready-after S] [--fail-before-ready MSG] [--crash-after S]
                    [--stop-log FILE] [--grandchild PIDFILE] [--ignore-term]

`GET /ready` answers 200 once `--ready-after` seconds passed. It logs JSON lines as the stack's
services do; on SIGTERM it appends NAME to `--stop-log` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def log(level: str, event: str, **kw: object) -> None:
    print(json.dumps({"level": level, "event": event, **kw}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("--ready-after", type=float, default=0.0)
    ap.add_argument("--fail-before-ready")
    ap.add_argument("--crash-after", type=float)
    ap.add_argument("--stop-log")
    ap.add_argument("--grandchild")
    ap.add_argument("--ignore-term", action="store_true")
    args = ap.parse_args()
    if args.fail_before_ready:
        log("error", "cannot start", error=args.fail_before_ready)
        return 2
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = time.monotonic() - started >= args.ready_after
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(args.name.encode())

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.grandchild:
        gc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(args.grandchild).write_text(str(gc.pid))

    def on_term(signum: int, frame: object) -> None:
        if args.ignore_term:
            log("warning", "ignoring SIGTERM")
            return
        if args.stop_log:
            with open(args.stop_log, "a") as f:
                f.write(args.name + "\n")
        log("info", "stopping", signal="SIGTERM")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    if args.crash_after is not None:
        threading.Timer(
            args.crash_after,
            lambda: (log("error", "crashing"), sys.stdout.flush(), __import__("os")._exit(3)),
        ).start()
    log("info", "serving", port=args.port)
    print("plain text line", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
