"""Configuration: defaults, YAML, flags, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmd_kvmanager.config import ConfigError, load_config
from llmd_kvmanager.server import build_config, main, parse_args


def test_defaults() -> None:
    cfg = load_config(None)
    assert (cfg.grpc_port, cfg.http_port) == (9010, 9011)
    assert cfg.backend.kind == "memory"
    assert cfg.tier_weights == {"GPU": 1.0, "CPU": 0.8, "STORAGE": 0.5}


def test_yaml_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "kv.yaml"
    f.write_text(
        "models:\n"
        "  - {name: m, hash_algo: sha256_cbor, block_size: 32, loras: {ad: /l/ad}}\n"
        "tier_weights: {cpu: 0.5}\n"
        "engines:\n"
        "  - {endpoint: '10.0.0.1:8000', zmq: 'tcp://10.0.0.1:5557'}\n"
    )
    args = parse_args(
        ["-c", str(f), "--grpc-port", "1", "--bind", "tcp://*:5557",
         "--engine", "10.0.0.2:8000=tcp://10.0.0.2:5557,m,tcp://10.0.0.2:5558"]
    )  # fmt: skip
    cfg = build_config(args)
    assert cfg.grpc_port == 1
    assert cfg.ingest.bind == "tcp://*:5557"
    assert cfg.tier_weights == {"CPU": 0.5}
    m = cfg.model("m")
    assert m is not None and (m.hash_algo, m.block_size, m.loras) == (
        "sha256_cbor",
        32,
        {"ad": "/l/ad"},
    )
    assert [(e.endpoint, e.model, e.replay) for e in cfg.engines] == [
        ("10.0.0.1:8000", None, None),
        ("10.0.0.2:8000", "m", "tcp://10.0.0.2:5558"),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"models": [{"name": "m", "block_size": 0}]},
            "models.0.block_size: Input should be greater than 0",
        ),
        ({"models": [{"name": "m", "hash_algo": "md5"}]}, "models.0.hash_algo: must be one of"),
        (
            {"engines": [{"endpoint": "nohost", "zmq": "tcp://x:1"}]},
            "engines.0.endpoint: 'nohost' is not host:port",
        ),
        (
            {"engines": [{"endpoint": "a:1", "zmq": "x:1"}]},
            "engines.0.zmq: 'x:1' is not a ZMQ address",
        ),
        ({"backend": {"kind": "etcd"}}, "backend.kind: Input should be 'memory' or 'redis'"),
        ({"tier_weights": {"CPU": 2}}, "tier_weights: CPU: must be within [0, 1]"),
        ({"grpc_prot": 1}, "grpc_prot: Extra inputs are not permitted"),
    ],
)
def test_bad_input_names_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_main_reports_config_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--engine", "no-equals-sign"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "llmd-kvmanager: --engine: 'no-equals-sign' is not ENDPOINT=ZMQ[,MODEL[,REPLAY]]"
