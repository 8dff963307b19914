"""Table tests of the planner: the exact engine command line per hardware, and its refusals."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable
from typing import Any

import pytest
from llmd_modelservice.planner import PlanError, check_hardware, plan_specs
from llmd_sdk.hardware import HardwareProfile

LLAMA: dict[str, Any] = {
    "model": {
        "name": "meta-llama/Llama-3.1-8B-Instruct",
        "servedNames": ["llama"],
        "parameters": "8B",
        "dtype": "bfloat16",
        "maxModelLen": 8192,
        "architecture": {"numLayers": 32, "numKvHeads": 8, "headDim": 128},
    },
    "engine": {"kind": "vllm"},
    "parallelism": {"tensor": 2},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SERVE = "vllm serve meta-llama/Llama-3.1-8B-Instruct --served-model-name llama --dtype bfloat16 "
KV = (
    '{"enable_kv_cache_events":true,"endpoint":"tcp://127.0.0.1:5557","publisher":"zmq",'
    '"topic":"kv@127.0.0.1:%d@llama"}'
)


def _line(env: str, tail: str, port: int = 8200) -> str:
    """Expected command, built from readable pieces."""
    kv = shlex.quote(KV % port)
    head = SERVE.replace(
        "--served-model-name", f"--host 127.0.0.1 --port {port} --served-model-name"
    )
    return f"{env} {head}--max-model-len 8192 {tail} --kv-events-config {kv}".replace("  ", " ")


VLLM_TABLE = [
    pytest.param(
        "nvidia",
        {},
        [
            _line(
                "CUDA_VISIBLE_DEVICES=0,1 PYTHONHASHSEED=42",
                "--tensor-parallel-size 2 --gpu-memory-utilization 0.9 --block-size 16 "
                "--prefix-caching-hash-algo sha256",
            )
        ],
        id="nvidia-tp2",
    ),
    pytest.param(
        "amd",
        {},
        [
            _line(
                "HIP_FORCE_DEV_KERNARG=1 HIP_VISIBLE_DEVICES=0,1 PYTHONHASHSEED=42 "
                "VLLM_ROCM_USE_AITER=1",
                "--tensor-parallel-size 2 --gpu-memory-utilization 0.9 --block-size 16 "
                "--prefix-caching-hash-algo sha256",
            )
        ],
        id="amd-mi300x-tp2-aiter",
    ),
    pytest.param(
        "intel-xpu",
        {},
        [
            _line(
                "PYTHONHASHSEED=42 ZE_AFFINITY_MASK=0,1",
                "--tensor-parallel-size 2 --gpu-memory-utilization 0.9 "
                "--distributed-executor-backend mp --block-size 16 "
                "--prefix-caching-hash-algo sha256",
            )
        ],
        id="xpu-tp2-mp-backend",
    ),
    pytest.param(
        "tpu",
        {"parallelism": {"tensor": 4}},
        [
            _line(
                "PYTHONHASHSEED=42 TPU_VISIBLE_CHIPS=0,1,2,3",
                "--tensor-parallel-size 4 --gpu-memory-utilization 0.9 --block-size 16 "
                "--prefix-caching-hash-algo sha256",
            )
        ],
        id="tpu-tp4",
    ),
    pytest.param(
        "cpu",
        {},
        [
            _line(
                "PYTHONHASHSEED=42 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND='0-14|15-29'",
                "--tensor-parallel-size 2 --distributed-executor-backend mp --block-size 16 "
                "--prefix-caching-hash-algo sha256",
            )
        ],
        id="cpu-tp2-omp-bind",
    ),
    pytest.param(
        "nvidia",
        {"parallelism": {"tensor": 1, "data": 4, "expert": True}},
        [
            _line(
                "CUDA_VISIBLE_DEVICES=0,1,2,3 PYTHONHASHSEED=42",
                "--tensor-parallel-size 1 --data-parallel-size 4 --enable-expert-parallel "
                "--gpu-memory-utilization 0.9 --block-size 16 --prefix-caching-hash-algo sha256",
            )
        ],
        id="nvidia-dp4-expert-parallel",
    ),
    pytest.param(
        "nvidia",
        {
            "role": "decode",
            "parallelism": {"tensor": 1},
            "prefill": {"replicas": 1},
            "kvTransfer": {},
        },
        [
            _line(
                f"CUDA_VISIBLE_DEVICES={dev} PYTHONHASHSEED=42 "
                f"VLLM_NIXL_SIDE_CHANNEL_HOST=127.0.0.1 VLLM_NIXL_SIDE_CHANNEL_PORT={5600 + dev}",
                "--tensor-parallel-size 1 --gpu-memory-utilization 0.9 --block-size 16 "
                "--prefix-caching-hash-algo sha256",
                port=8200 + dev,
            )
            + ' --kv-transfer-config \'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''
            for dev in (0, 1)
        ],
        id="nvidia-pd-nixl",
    ),
]


@pytest.mark.parametrize(("hardware", "overrides", "expected"), VLLM_TABLE)
def test_vllm_command_line_per_hardware(
    hardware: str,
    overrides: dict[str, Any],
    expected: list[str],
    make_spec: Callable[..., Any],
    profile: Callable[[str], HardwareProfile],
) -> None:
    ms = make_spec("llama", **_merge(LLAMA, overrides))
    plans, _ = plan_specs([ms], profile(hardware))
    assert [p.command_line() for p in plans] == expected


def test_lora_bind_mode_hash_settings_and_user_overrides(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    spec = _merge(
        LLAMA,
        {
            "replicas": 2,
            "parallelism": {"tensor": 1},
            "loras": [{"name": "sql", "path": "/l/sql"}, {"name": "chat", "path": "/l/chat"}],
            "kvEvents": {"mode": "bind", "bindPort": 6000, "replayPort": 6100},
            "engine": {
                "prefixCachingHashAlgo": "sha256_cbor",
                "pythonHashSeed": "7",
                "blockSize": 64,
                "maxNumSeqs": 128,
                "extraArgs": ["--enforce-eager"],
                "env": {"HF_HOME": "/cache"},
            },
        },
    )
    plans, _ = plan_specs([make_spec("llama", **spec)], profile("nvidia"))
    assert len(plans) == 2
    for i, p in enumerate(plans):
        argv = list(p.argv)
        assert p.env == {
            "CUDA_VISIBLE_DEVICES": str(i),
            "PYTHONHASHSEED": "7",
            "HF_HOME": "/cache",
        }
        assert argv[argv.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
        assert argv[argv.index("--block-size") + 1] == "64"
        assert argv[argv.index("--max-num-seqs") + 1] == "128"
        assert argv[argv.index("--lora-modules") :][:3] == [
            "--lora-modules",
            "sql=/l/sql",
            "chat=/l/chat",
        ]
        assert argv[argv.index("--max-loras") + 1] == "2"
        assert argv[-1] == "--enforce-eager", "user args come last so they win"
        kv = argv[argv.index("--kv-events-config") + 1]
        assert f'"endpoint":"tcp://*:{6000 + i}"' in kv
        assert f'"replay_endpoint":"tcp://*:{6100 + i}"' in kv
        assert p.kv_events_endpoint == f"tcp://127.0.0.1:{6000 + i}"
    # Identical hash settings on every replica, distinct endpoints.
    assert len({(p.hash_algo, p.hash_seed, p.block_size) for p in plans}) == 1
    assert len({p.endpoint for p in plans}) == 2


def test_amd_without_aiter_architecture(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    prof = profile("amd")
    for d in prof.devices:
        d.architecture = "gfx90a"  # MI200: no AITER
    plans, _ = plan_specs([make_spec("llama", **LLAMA)], prof)
    assert "VLLM_ROCM_USE_AITER" not in plans[0].env
    assert plans[0].env["HIP_VISIBLE_DEVICES"] == "0,1"


def test_sglang_command_line(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec(
        "llama",
        **_merge(
            LLAMA,
            {
                "engine": {"kind": "sglang", "maxNumSeqs": 64},
                "role": "decode",
                "prefill": {"replicas": 0},
                "kvTransfer": {},
                "loras": [{"name": "sql", "path": "/l/sql"}],
            },
        ),
    )
    (p,) = plan_specs([ms], profile("nvidia"))[0]
    kv = shlex.quote(KV % 8200)
    assert p.command_line() == (
        "CUDA_VISIBLE_DEVICES=0,1 PYTHONHASHSEED=42 python -m sglang.launch_server "
        "--model-path meta-llama/Llama-3.1-8B-Instruct --host 127.0.0.1 --port 8200 "
        "--served-model-name llama --dtype bfloat16 --context-length 8192 --tp-size 2 "
        "--mem-fraction-static 0.9 --page-size 16 --max-running-requests 64 --enable-metrics "
        f"--kv-events-config {kv} --disaggregation-mode decode "
        "--disaggregation-transfer-backend nixl --enable-lora --lora-paths sql=/l/sql "
        "--max-loras-per-batch 1"
    )


def test_sim_command_line(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec(
        "tiny",
        model={"name": "Qwen/Qwen3-0.6B", "servedNames": ["qwen", "qwen-alias"]},
        replicas=2,
        engine={"kind": "sim", "maxNumSeqs": 8, "sim": {"mode": "echo", "timeScale": 0.5}},
        parallelism={"data": 2},
        loras=[{"name": "a", "path": "/a"}],
    )
    plans, notes = plan_specs([ms], profile("nvidia"))
    assert notes == [], "sim needs no hardware and no memory check"
    assert [p.devices for p in plans] == [(), ()], "sim takes no GPUs"
    kv = shlex.quote(
        '{"enable_kv_cache_events":true,"endpoint":"tcp://127.0.0.1:5557","publisher":"zmq",'
        '"topic":"kv@127.0.0.1:8201@qwen"}'
    )
    assert plans[1].command_line() == (
        "PYTHONHASHSEED=42 llmd-sim --model Qwen/Qwen3-0.6B --served-model-name qwen qwen-alias "
        "--port 8201 --max-num-seqs 8 --block-size 16 --prefix-caching-hash-algo sha256 "
        f"--data-parallel-size 2 --kv-events-config {kv} --max-loras 1 --lora-modules a=/a "
        "--mode echo --time-scale 0.5"
    )


# -- refusals ----------------------------------------------------------------------------------


def test_accelerator_mismatch_is_one_line(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec("llama", **_merge(LLAMA, {"hardware": {"accelerator": "amd"}}))
    with pytest.raises(PlanError) as exc:
        check_hardware(ms, profile("nvidia"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "wants 'amd'" in msg and "'nvidia'" in msg and "8 x NVIDIA H100 80GB HBM3" in msg


def test_not_enough_devices_shows_the_sum(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec("llama", **_merge(LLAMA, {"replicas": 5}))  # 5 x TP2 = 10 > 8
    with pytest.raises(PlanError, match=r"5 x 2 \(TP 2 x DP 1\) = 10 nvidia device\(s\), 8 free"):
        check_hardware(ms, profile("nvidia"))


def test_memory_that_does_not_fit_shows_the_arithmetic(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec(
        "big",
        model={
            "name": "meta-llama/Llama-3.1-70B-Instruct",
            "parameters": "70B",
            "dtype": "bfloat16",
            "maxModelLen": 131072,
            "architecture": {"numLayers": 80, "numKvHeads": 8, "headDim": 128},
        },
        engine={"kind": "vllm"},
        parallelism={"tensor": 1},
    )
    with pytest.raises(PlanError) as exc:
        check_hardware(ms, profile("nvidia"))
    msg = str(exc.value)
    assert "\n" not in msg
    # 70e9 x 2 B = 130.39 GiB; KV 131072 x (2 x 80 x 8 x 128 x 2 B = 320 KiB) = 40 GiB.
    assert "weights 70B params x 2 B (bfloat16) / TP 1 = 130.39 GiB" in msg
    assert "KV 1 seq x 131072 tokens x 320.0 KiB/token = 40.00 GiB" in msg
    assert "= 170.39 GiB > 0.9 x 79.60 GiB = 71.64 GiB" in msg
    # With TP 4 it fits: 32.60 + 10.00 GiB per device.
    ms4 = make_spec("big", **{**ms.spec.model_dump(by_alias=True), "parallelism": {"tensor": 4}})
    notes = check_hardware(ms4, profile("nvidia"))
    assert any("= 42.60 GiB <= 0.9 x 79.60 GiB" in n for n in notes)


def test_multi_node_data_parallel_is_refused_locally(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    ms = make_spec(
        "ep", **_merge(LLAMA, {"parallelism": {"tensor": 1, "data": 16, "dataLocal": 8}})
    )
    with pytest.raises(PlanError, match="needs 2 nodes; local mode runs one node"):
        check_hardware(ms, profile("nvidia"))


def test_plans_do_not_share_devices_or_ports_across_specs(
    make_spec: Callable[..., Any], profile: Callable[[str], HardwareProfile]
) -> None:
    a = make_spec("a", **_merge(LLAMA, {"replicas": 2}))
    b = make_spec("b", **_merge(LLAMA, {"replicas": 2}))
    plans, _ = plan_specs([a, b], profile("nvidia"))
    devices = [d for p in plans for d in p.devices]
    assert sorted(devices) == list(range(8))
    assert [p.port for p in plans] == [8200, 8201, 8202, 8203]
    c = make_spec("c", **LLAMA)
    with pytest.raises(PlanError, match="0 free"):
        plan_specs([a, b, c], profile("nvidia"))


def test_profile_fixture_is_a_real_hardware_profile(profile: Callable[[str], Any]) -> None:
    p = profile("amd")
    assert p.accelerator == "amd" and p.device_count == 8
    assert copy.deepcopy(p) == p
