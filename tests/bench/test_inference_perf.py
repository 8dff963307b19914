"""inference-perf as the bench's load driver: its config, its records, and a real run.

The real run needs the `inference-perf` program (Python 3.12): `LLMD_INFERENCE_PERF` names it,
else it is looked up on PATH; `.ci/run` installs it where a Python 3.12 exists.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmd.bench.inference_perf import (
    InferencePerfDriver,
    InferencePerfError,
    config_for,
    find_executable,
    results_from,
    token_lengths,
)
from llmd.bench.workload import WorkloadSpec

SPEC = WorkloadSpec(
    seed=3, groups=2, users_per_group=2, turns=2, system_words=200, question_words=20,
    answer_words=20, output_tokens=8, think_time_s=0.5,
)  # fmt: skip


def test_the_config_mirrors_the_workload_at_the_cells_real_rate(tmp_path: Path) -> None:
    cfg = config_for(
        "http://127.0.0.1:9", "m", SPEC, 4.0, time_scale=0.2, lengths=(300, 40), out_dir=tmp_path
    )
    # 4 req/s of model time on engines 5x faster than a GPU: 20 req/s of real time, for the
    # trace's 8 requests rounded up to a whole second.
    load = cfg["load"]
    assert (load["type"], load["stages"]) == ("poisson", [{"rate": 20.0, "duration": 1}])
    assert load["num_workers"] == 1 and load["worker_max_concurrency"] >= 4096  # open loop
    sp = cfg["data"]["shared_prefix"]
    assert (sp["num_groups"], sp["num_prompts_per_group"]) == (2, 2)
    assert (sp["system_prompt_len"], sp["question_len"], sp["output_len"]) == (300, 40, 8)
    assert sp["enable_multi_turn_chat"] is False and sp["seed"] == 3
    assert cfg["server"] == {
        "type": "vllm", "model_name": "m", "base_url": "http://127.0.0.1:9", "ignore_eos": True,
    }  # fmt: skip
    assert Path(cfg["tokenizer"]["pretrained_model_name_or_path"], "tokenizer.json").is_file()
    assert cfg["storage"]["local_storage"]["path"] == str(tmp_path)
    at_one = config_for("u", "m", SPEC, 2.0, time_scale=1.0, lengths=(1, 1), out_dir=tmp_path)
    assert at_one["load"]["stages"] == [{"rate": 2.0, "duration": 4}]  # 8 requests at 2/s
    with pytest.raises(ValueError, match="rate_rps"):
        config_for("u", "m", SPEC, 0.0, time_scale=1.0, lengths=(1, 1), out_dir=tmp_path)


def test_token_lengths_are_the_workloads_system_prompt_and_question_in_tokens() -> None:
    system, question = token_lengths(SPEC)
    longer = token_lengths(WorkloadSpec(seed=3, system_words=400, question_words=40))
    assert 200 <= system < longer[0]  # at least a token per word, and it grows with the words
    assert 20 <= question < longer[1]


def _record(start: float, chunks: list[float], end: float, **extra: object) -> dict[str, object]:
    # The shape of inference-perf 0.7's per_request_lifecycle_metrics.json entries.
    return {
        "start_time": start,
        "end_time": end,
        "request": "{}",
        "response": "",
        "info": {
            "response_metrics": {
                "output_tokens": len(chunks),
                "server_usage": {
                    "prompt_tokens": 230,
                    "completion_tokens": len(chunks),
                    "prompt_tokens_details": {"cached_tokens": 208},
                },
                "chunk_times": chunks,
            },
            "extra_info": {"user_session": "user_session_4", "chat_round": 1},
        },
        "error": None,
        **extra,
    }


def test_records_become_results_relative_to_the_first_start() -> None:
    ok = _record(100.5, [100.6, 100.7, 100.75], 100.8)
    failed = _record(100.0, [], 100.1, error={"error_type": "HTTP Error 503", "error_msg": "busy"})
    broken = _record(100.2, [], 100.3, error={"error_type": "ClientPayloadError", "error_msg": "x"})
    results, wall = results_from([ok, failed, broken])
    first, second, third = results
    assert first.request_id == "user_session_4-r1"
    assert first.ok and first.sent_s == pytest.approx(0.5) and first.ttft == pytest.approx(0.1)
    assert first.itls() == pytest.approx([0.1, 0.05])
    assert (first.prompt_tokens, first.cached_tokens, first.output_tokens) == (230, 208, 3)
    assert not second.ok and second.status == 503 and second.error == "HTTP Error 503: busy"
    assert not third.ok and third.status == 0 and third.error.startswith("ClientPayloadError")
    assert wall == pytest.approx(0.8)
    with pytest.raises(InferencePerfError, match="no requests"):
        results_from([])


def test_a_missing_program_is_one_line_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InferencePerfError, match="no `inference-perf` on PATH"):
        find_executable(None)
    not_exe = tmp_path / "inference-perf"
    not_exe.write_text("")
    with pytest.raises(InferencePerfError, match=r"^--inference-perf: .* not an executable"):
        find_executable(str(not_exe))


def test_the_cli_refuses_a_missing_program_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmd", "bench", "--no-des", "--driver", "inference-perf",
         "--inference-perf", str(tmp_path / "nope"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("llmd bench: --inference-perf: ") and "Traceback" not in proc.stderr


def _inference_perf() -> str | None:
    return os.environ.get("LLMD_INFERENCE_PERF") or shutil.which("inference-perf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(
    _inference_perf() is None,
    reason="inference-perf is not installed (it needs Python 3.12; .ci/run installs it where "
    "one exists; LLMD_INFERENCE_PERF names the program)",
)
def test_a_real_inference_perf_run_against_a_real_engine(tmp_path: Path) -> None:
    port = _free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "llmd_sim.server", "--model", "bench-model", "--host",
         "127.0.0.1", "--port", str(port), "--time-scale", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert sim.poll() is None, "llmd-sim exited"
            assert time.monotonic() < deadline, "llmd-sim not healthy after 60 s"
            time.sleep(0.1)
        exe = _inference_perf()
        assert exe is not None
        driver = InferencePerfDriver(exe, SPEC, model="bench-model", time_scale=0.2)
        results, wall = asyncio.run(driver.run(url, 4.0, tmp_path))
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    assert results and all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert wall > 0 and all(r.ttft is not None and r.ttft >= 0 for r in results)
    assert all(r.output_tokens == SPEC.output_tokens for r in results)
    system_tokens, _ = driver.lengths
    assert min(r.prompt_tokens for r in results) >= system_tokens
    # Each user's prompt comes back (the trace's 8 requests at 20/s real: one second, 20
    # requests over 4 prompts), and the one engine has it cached by then.
    assert len(results) > SPEC.groups * SPEC.users_per_group
    assert sum(r.cached_tokens for r in results) > 0
    assert (tmp_path / "inference-perf.yaml").is_file()
