"""Settings: defaults, YAML, environment, flags, and one-line errors naming the field."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from llmd_kvmanager.config import config_from, load_config
from llmd_kvmanager.server import main
from llmd_sdk.settings import SettingsError


def test_defaults() -> None:
    cfg = load_config([])
    assert (cfg.grpc_port, cfg.http_port) == (9010, 9011)
    assert cfg.backend.kind == "memory"
    assert cfg.tier_weights == {"GPU": 1.0, "CPU": 0.8, "STORAGE": 0.5}


def test_yaml_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "kv.yaml"
    f.write_text(
        "grpc_port: 7\n"
        "models:\n"
        "  - {name: m, hash_algo: sha256_cbor, block_size: 32, loras: {ad: /l/ad}}\n"
        "tier_weights: {cpu: 0.5}\n"
        "engines:\n"
        "  - {endpoint: '10.0.0.1:8000', zmq: 'tcp://10.0.0.1:5557'}\n"
    )
    monkeypatch.setenv("LLMD_KVMANAGER_HTTP_PORT", "8")
    monkeypatch.setenv("LLMD_KVMANAGER_BACKEND__KIND", "redis")
    cfg = load_config(
        ["--config", str(f), "--grpc-port", "1", "--ingest.bind", "tcp://*:5557",
         "--engine", "10.0.0.2:8000=tcp://10.0.0.2:5557,m,tcp://10.0.0.2:5558"]
    )  # fmt: skip
    assert (cfg.grpc_port, cfg.http_port, cfg.backend.kind) == (1, 8, "redis")
    assert cfg.ingest.bind == "tcp://*:5557"
    assert cfg.tier_weights == {"CPU": 0.5}
    m = cfg.model("m")
    assert m is not None
    assert (m.hash_algo, m.block_size, m.loras) == ("sha256_cbor", 32, {"ad": "/l/ad"})
    assert [(e.endpoint, e.model, e.replay) for e in cfg.engines] == [
        ("10.0.0.1:8000", None, None),
        ("10.0.0.2:8000", "m", "tcp://10.0.0.2:5558"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [{"name": "m", "block_size": 0}]}, "models.0.block_size: must be > 0 (got 0)"),
        ({"models": [{"name": "m", "hash_algo": "md5"}]}, "models.0.hash_algo: must be one of"),
        (
            {"engines": [{"endpoint": "nohost", "zmq": "tcp://x:1"}]},
            "engines.0.endpoint: 'nohost' is not host:port",
        ),
        ({"engines": [{"endpoint": "a:1", "zmq": "x:1"}]}, "engines.0.zmq: 'x:1' is not a ZMQ"),
        ({"backend": {"kind": "etcd"}}, "backend.kind: must be one of"),
        (
            {"tier_weights": {"CPU": 2}},
            "tier_weights: every weight must be within [0, 1] (CPU has 2.0)",
        ),
        ({"grpc_prot": 1}, "grpc_prot: unknown setting"),
    ],
)
def test_bad_input_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        config_from(data)
    assert len(err.value.lines) == 1
    assert err.value.lines[0].startswith(message), err.value.lines[0]


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_config(["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(SettingsError, match="invalid YAML"):
        load_config(["--config", str(bad)])


def test_main_reports_bad_settings_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--engine", "no-equals-sign", "--grpc-port", "-3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0] == "llmd-kvmanager: invalid settings (1 problem):"
    assert "--engine: expected ENDPOINT=ZMQ[,MODEL[,REPLAY]] (got no-equals-sign)" in err
    assert main(["--grpc-port", "-3"]) == 2
    assert "grpc_port: must be >= 0 (got -3)" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("llmd-kvmanager 0.")


def test_unreachable_redis_at_start_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    args = ["--backend.kind", "redis", "--backend.redis-url", url, "--grpc-port", "0",
            "--http-port", "0", "--no-log-json"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"llmd-kvmanager: backend.redis_url {url}: ")
