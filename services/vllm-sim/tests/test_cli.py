"""The `llmd-sim` command: flag errors, graceful shutdown, injected crashes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from llmd_sim.config import ConfigError, parse_args


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-num-seqs", "0"], "--max-num-seqs"),
        (["--max-num-batched-tokens", "10", "--max-num-seqs", "20"], "--max-num-batched-tokens"),
        (["--kv-events-config", "{oops"], "--kv-events-config: not valid JSON"),
        (["--kv-events-config", '{"enable_kv_cache_events": true, "bogus": 1}'], "bogus"),
        (["--kv-events-config", '{"publisher": "kafka"}'], "publisher"),
        (["--lora-modules", "justaname"], "--lora-modules"),
        (["--failure-rate", "2"], "--failure-rate"),
        (["--time-scale", "-1"], "--time-scale"),
        (["--latency-profile", "/nonexistent.json"], "--latency-profile"),
    ],
)
def test_bad_flags_are_named(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_args(argv)


def test_vllm_flag_spellings_parse() -> None:
    cfg = parse_args(
        [
            "meta-llama/Llama-3.1-8B-Instruct",
            "--served-model-name", "llama", "llama-alias",
            "--max-num-seqs", "64", "--max-num-batched-tokens", "4096", "--max-model-len", "8192",
            "--block-size", "32", "--num-gpu-blocks-override", "1000",
            "--prefix-caching-hash-algo", "sha256_cbor",
            "--kv-events-config", '{"enable_kv_cache_events": true, "endpoint": "tcp://*:6000"}',
            "--data-parallel-size", "2",
            "--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}',
            "--enable-lora", "--lora-modules", "a=/a", '{"name": "b", "path": "/b"}',
            "--max-loras", "2",
        ]
    )  # fmt: skip
    assert cfg.model == "meta-llama/Llama-3.1-8B-Instruct" and cfg.model_name == "llama"
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.block_size) == (64, 4096, 32)
    assert cfg.kv_events.enabled and cfg.kv_events.endpoint == "tcp://*:6000"
    assert cfg.kv_transfer.enabled and cfg.data_parallel_size == 2
    assert [m.name for m in cfg.lora_modules] == ["a", "b"] and cfg.max_loras == 2


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd_sim.server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_error_is_one_line_and_exit_2() -> None:
    res = _run("--max-num-seqs", "0")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--max-num-seqs" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.integration
def test_sigterm_shuts_down_gracefully(sim_process: Any) -> None:
    sim = sim_process("--time-scale", "0")
    assert httpx.get(sim.url + "/health").status_code == 200
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(15) == 0
    assert "llmd_sim_stopped" in sim.log.read_text()


@pytest.mark.integration
def test_injected_crash_kills_the_process(sim_process: Any) -> None:
    sim = sim_process("--failure-rate", "1", "--failure-kinds", "crash", "--time-scale", "0")
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            sim.url + "/v1/completions", json={"model": "llmd-sim", "prompt": "x"}, timeout=10
        )
    deadline = time.monotonic() + 10
    while sim.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.proc.returncode == 1


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            '{"enable_kv_cache_events": true, "buffer_steps": "x"}',
            "buffer_steps must be an integer",
        ),
        (
            '{"enable_kv_cache_events": true, "endpoint": 5}',
            "endpoint must be a string, got a number",
        ),
        ('{"enable_kv_cache_events": "yes"}', "enable_kv_cache_events must be a boolean"),
        ('{"enable_kv_cache_events": true, "hwm": -1}', "hwm must be >= 0"),
        ('{"enable_kv_cache_events": true, "topic": 7}', "topic must be a string"),
        ('{"enable_kv_cache_events": true, "replay_endpoint": []}', "replay_endpoint must be"),
    ],
)
def test_kv_events_config_field_types_are_checked(config: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=f"--kv-events-config: {needle}"):
        parse_args(["--kv-events-config", config])


def test_kv_transfer_config_field_types_are_checked() -> None:
    with pytest.raises(ConfigError, match="--kv-transfer-config: kv_connector_extra_config must"):
        parse_args(
            [
                "--kv-transfer-config",
                '{"kv_connector": "NixlConnector", "kv_connector_extra_config": 1}',
            ]
        )
    with pytest.raises(ConfigError, match="--kv-transfer-config: kv_role must be a string or null"):
        parse_args(["--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": 3}'])


def test_a_taken_kv_events_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = f'{{"enable_kv_cache_events": true, "endpoint": "tcp://*:{port}"}}'
        res = _run("--kv-events-config", config)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("llmd-sim: error: --kv-events-config: endpoint tcp://*:"), last
    assert "in use" in last, last


def test_a_taken_http_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _run("--host", "127.0.0.1", "--port", str(port))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"llmd-sim: error: --port {port}: "), last
    assert "in use" in last, last
