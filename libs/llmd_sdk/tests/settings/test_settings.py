"""ServiceSettings and load_settings with a real service-shaped subclass: precedence of CLI,
env, YAML and defaults; one readable line per bad field; main() exiting 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from llmd_sdk.settings import (
    ServiceSettings,
    SettingsConfigDict,
    SettingsError,
    load_or_exit,
    load_settings,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class ScrapeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scrape_interval: float = Field(0.05, gt=0)
    endpoints: list[str] = Field(default_factory=list)


class EppLikeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMD_TESTSVC_")

    port: int = Field(9002, ge=1, le=65535)
    mode: Literal["fast", "exact"] = "fast"
    token: SecretStr | None = None
    verbose: bool = False
    pool: str = "default"
    epp: ScrapeSettings = Field(default_factory=lambda: ScrapeSettings.model_validate({}))

    @field_validator("pool")
    @classmethod
    def _pool_is_a_dns_label(cls, value: str) -> str:
        if not value.replace("-", "").isalnum():
            raise ValueError("must be a DNS label")
        return value


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LLMD_TESTSVC_"):
            monkeypatch.delenv(name)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults() -> None:
    settings = load_settings(EppLikeSettings)
    assert (settings.port, settings.mode, settings.verbose) == (9002, "fast", False)
    assert settings.epp.scrape_interval == 0.05 and settings.config is None


def test_cli_over_env_over_yaml_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(
        tmp_path,
        """
        port: 9100
        mode: exact
        pool: from-yaml
        epp:
          scrape_interval: 0.5
          endpoints: [10.0.0.1:8000]
        """,
    )
    monkeypatch.setenv("LLMD_TESTSVC_PORT", "9200")
    monkeypatch.setenv("LLMD_TESTSVC_EPP__SCRAPE_INTERVAL", "0.25")
    monkeypatch.setenv("LLMD_TESTSVC_POOL", "from-env")
    settings = load_settings(EppLikeSettings, ["--pool", "from-cli", "--verbose"], path)
    assert settings.pool == "from-cli"  # CLI beats env and YAML
    assert settings.port == 9200  # env beats YAML
    assert settings.mode == "exact"  # YAML beats the default
    assert settings.verbose is True
    # Nested sections merge across sources instead of replacing each other.
    assert settings.epp.scrape_interval == 0.25
    assert settings.epp.endpoints == ["10.0.0.1:8000"]
    assert settings.config == path


def test_yaml_file_from_the_config_flag_and_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(tmp_path, "port: 9300\n")
    assert load_settings(EppLikeSettings, ["--config", str(path)]).port == 9300
    assert load_settings(EppLikeSettings, [f"--config={path}"]).config == path
    monkeypatch.setenv("LLMD_TESTSVC_CONFIG", str(path))
    assert load_settings(EppLikeSettings).port == 9300


def test_one_line_per_bad_field_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, "mode: slow\nlisten: 0.0.0.0\n")
    monkeypatch.setenv("LLMD_TESTSVC_EPP__SCRAPE_INTERVAL", "-1")
    with pytest.raises(SettingsError) as caught:
        load_settings(EppLikeSettings, ["--port", "70000", "--pool", "no spaces"], path)
    assert caught.value.lines == [
        "port: must be <= 65535 (got 70000)",
        "mode: must be one of 'fast' or 'exact' (got slow)",
        'pool: must be a DNS label (got "no spaces")',
        "epp.scrape_interval: must be > 0 (got -1)",
        "listen: unknown setting (got 0.0.0.0)",
    ]
    assert str(caught.value) == "\n".join(caught.value.lines)


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "token: [not, a, string]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(EppLikeSettings, yaml_path=path)
    assert caught.value.lines == ["token: must be a string (got ***)"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port: [1\n", "svc.yaml:2:1: invalid YAML: "),
        ("- port\n- 9000\n", "svc.yaml: the top level must be a mapping of settings, not list"),
    ],
)
def test_bad_yaml_is_one_line_with_its_place(tmp_path: Path, content: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(EppLikeSettings, yaml_path=_yaml(tmp_path, content))
    (line,) = caught.value.lines
    assert line.startswith(str(tmp_path / expected)), line


def test_missing_yaml_file_and_unknown_flag(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nowhere\.yaml: no such file$"):
        load_settings(EppLikeSettings, ["--config", str(tmp_path / "nowhere.yaml")])
    with pytest.raises(SettingsError) as caught:
        load_settings(EppLikeSettings, ["--nope", "1"])
    assert caught.value.lines == ["command line: unrecognized arguments: --nope 1"]


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(EppLikeSettings, yaml_path=_yaml(tmp_path, "# nothing\n")).port == 9002


def test_load_or_exit_prints_lines_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_or_exit(EppLikeSettings, ["--port", "0", "--mode", "x"], prog="llmd-epp")
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        "llmd-epp: invalid settings (2 problems):\n"
        "  port: must be >= 1 (got 0)\n"
        "  mode: must be one of 'fast' or 'exact' (got x)\n"
    )


MAIN = textwrap.dedent(
    """
    from pydantic import Field
    from llmd_sdk.settings import ServiceSettings, SettingsConfigDict, load_or_exit

    class Settings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="LLMD_MAINTEST_")
        port: int = Field(9002, ge=1, le=65535)

    def main() -> None:
        settings = load_or_exit(Settings, prog="svc")
        print(f"port={settings.port}")

    main()
    """
)


@pytest.mark.integration
def test_a_real_main_exits_2_without_a_traceback(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(MAIN)
    env = {"LLMD_MAINTEST_PORT": "99999", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2
    assert (
        bad.stderr == "svc: invalid settings (1 problem):\n  port: must be <= 65535 (got 99999)\n"
    )
    good = subprocess.run(
        [sys.executable, str(script), "--port", "8080"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (good.returncode, good.stdout) == (0, "port=8080\n")
    helped = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "--port int" in helped.stdout
