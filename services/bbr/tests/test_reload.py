"""The model file is reloaded on change; a bad file keeps the table in use."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bbr_helpers import ROUTABLE, LogSink, sample
from llmd_bbr.reloader import ModelFileWatcher
from llmd_bbr.server import BBRApp
from llmd_sdk.extproc import EnvoyClient

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


async def _route(app: BBRApp, model: str) -> dict[str, str]:
    async with EnvoyClient([ROUTABLE[0].filter(f"127.0.0.1:{app.grpc_port}")]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(HEADERS, [f'{{"model": "{model}"}}'.encode()])
    assert out.local_reply is None
    return out.headers


def _replace(path: Path, text: str) -> None:
    """Write `path` atomically (a staged file renamed over it), as the README asks."""
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


async def _until(watcher: ModelFileWatcher, pred: Any) -> None:
    await asyncio.wait_for(watcher.wait_for(pred), timeout=10)


async def test_a_changed_file_is_applied(bbr: tuple[BBRApp, LogSink], models_file: Path) -> None:
    app, sink = bbr
    watcher = app.watcher
    assert watcher is not None
    assert (await _route(app, "llama"))["x-gateway-model-name"] == (
        "meta-llama/Llama-3.1-8B-Instruct"
    )
    generation = watcher.generation
    _replace(models_file, "aliases:\n  llama: Qwen/Qwen3-0.6B\n")
    await _until(watcher, lambda w: w.generation > generation)
    headers = await _route(app, "llama")
    assert headers["x-gateway-model-name"] == "Qwen/Qwen3-0.6B"
    assert "x-gateway-base-model-name" not in headers
    assert sample(app, "bbr_model_config_reloads_total", result="success") == 2  # start + change
    assert sample(app, "bbr_model_config_entries", kind="aliases") == 1
    assert sink.events("model file loaded")[-1]["aliases"] == 1


async def test_a_bad_file_keeps_the_old_table_and_logs_one_line(
    bbr: tuple[BBRApp, LogSink], models_file: Path
) -> None:
    app, sink = bbr
    watcher = app.watcher
    assert watcher is not None
    before = app.router.table
    _replace(models_file, "aliases:\n  llama: {target: x, rewrite: perhaps}\n")
    await _until(watcher, lambda w: w.failures == 1)
    assert app.router.table is before
    assert (await _route(app, "critic"))["x-gateway-model-name"] == "movie-critique"
    # Touch it again with the same bad content: checked again, not logged again.
    os.utime(models_file, ns=(1, 1))
    await _until(watcher, lambda w: w.failures == 2)
    errors = sink.events("model file not loaded; keeping the previous table")
    assert len(errors) == 1
    assert "aliases.llama" in errors[0]["error"] and "\n" not in errors[0]["error"]
    assert sample(app, "bbr_model_config_reloads_total", result="error") == 2
    # A deleted file is a failure too, and the table stays.
    os.unlink(models_file)
    await _until(watcher, lambda w: w.failures == 3)
    assert app.router.table is before
    assert (
        "no such file"
        in sink.events("model file not loaded; keeping the previous table")[-1]["error"]
    )
    # Fixed: applied again.
    generation = watcher.generation
    _replace(models_file, "adapters:\n  base-x: [lora-y]\n")
    await _until(watcher, lambda w: w.generation > generation)
    assert (await _route(app, "lora-y"))["x-gateway-base-model-name"] == "base-x"


async def test_configmap_volume_style_symlink_swap(make_app: Any, tmp_path: Path) -> None:
    """Kubelet updates a ConfigMap volume by re-pointing a `..data` symlink."""
    tmp_path = tmp_path / "volume"
    tmp_path.mkdir()
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "models.yaml").write_text("aliases: {a: model-one}\n")
    (v2 / "models.yaml").write_text("aliases: {a: model-two}\n")
    data = tmp_path / "..data"
    data.symlink_to(v1)
    link = tmp_path / "models.yaml"
    link.symlink_to(data / "models.yaml")
    app, _ = await make_app(models_config=link)
    assert (await _route(app, "a"))["x-gateway-model-name"] == "model-one"
    watcher = app.watcher
    assert watcher is not None
    generation = watcher.generation
    tmp = tmp_path / "..data_tmp"
    tmp.symlink_to(v2)
    os.replace(tmp, data)  # atomic, as kubelet does
    await _until(watcher, lambda w: w.generation > generation)
    assert (await _route(app, "a"))["x-gateway-model-name"] == "model-two"


async def test_requests_in_flight_during_reloads_see_a_whole_table(
    bbr: tuple[BBRApp, LogSink], models_file: Path
) -> None:
    """Alias and adapter change together; no request may see one without the other."""
    app, _ = bbr
    watcher = app.watcher
    assert watcher is not None
    versions = {
        "A": "aliases: {x: lora-a}\nadapters: {base-a: [lora-a]}\n",
        "B": "aliases: {x: lora-b}\nadapters: {base-b: [lora-b]}\n",
    }
    seen: set[tuple[str, str]] = set()
    stop = asyncio.Event()

    async def client() -> None:
        async with EnvoyClient([ROUTABLE[0].filter(f"127.0.0.1:{app.grpc_port}")]) as c:
            while not stop.is_set():
                async with c.exchange() as ex:
                    out = await ex.process_request(HEADERS, [b'{"model": "x"}'])
                h = out.headers
                seen.add((h["x-gateway-model-name"], h.get("x-gateway-base-model-name", "")))

    tasks = [asyncio.create_task(client()) for _ in range(4)]
    try:
        for i in range(6):
            generation = watcher.generation
            _replace(models_file, versions["AB"[i % 2]])
            await _until(watcher, lambda w, g=generation: w.generation > g)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    allowed = {
        ("meta-llama/Llama-3.1-8B-Instruct", ""),  # the first table has no alias x
        ("x", ""),
        ("lora-a", "base-a"),
        ("lora-b", "base-b"),
    }
    assert seen <= allowed, seen - allowed
    assert {("lora-a", "base-a"), ("lora-b", "base-b")} <= seen
