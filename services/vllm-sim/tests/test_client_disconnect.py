"""A client that leaves halfway through sending its request is one log line, not a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx


def test_a_request_body_cut_short_logs_one_line_and_the_server_carries_on(
    sim_process: Callable[..., Any],
) -> None:
    sim = sim_process("--model", "m")
    with socket.create_connection(("127.0.0.1", sim.port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n"
            b'content-length: 5000\r\n\r\n{"model": "m", "prompt": "'
        )
    deadline = time.monotonic() + 20
    while "client_disconnected" not in sim.log.read_text():
        assert time.monotonic() < deadline, sim.log.read_text()
        time.sleep(0.05)
    r = httpx.post(
        f"{sim.url}/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 2}
    )
    assert r.status_code == 200
    text = sim.log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
