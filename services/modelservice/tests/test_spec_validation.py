"""Invalid specs are rejected with every error listed, one line each, naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llmd_modelservice.spec import ModelService, parse_count
from llmd_modelservice.validation import SpecError, load_specs, parse_model_service

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "modelservice"


def _errors(doc: Any) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_model_service(doc)
    return exc.value.errors


def test_every_structural_error_is_listed_at_once() -> None:
    errors = _errors(
        {
            "apiVersion": "llm-d.ai/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "Bad_Name"},
            "spec": {
                "model": {"parameters": "lots"},
                "replicas": -1,
                "parallelism": {"tensor": 0},
                "engine": {"kind": "tgi", "blockSize": 0, "gpuMemoryUtilization": 1.5},
                "kvEvents": {"endpoint": "http://x"},
                "bogus": True,
            },
        }
    )
    fields = [e.split(":", 1)[0] for e in errors]
    assert fields == [
        "metadata.name",
        "spec.model.name",
        "spec.model.parameters",
        "spec.replicas",
        "spec.parallelism.tensor",
        "spec.engine.kind",
        "spec.engine.blockSize",
        "spec.engine.gpuMemoryUtilization",
        "spec.kvEvents.endpoint",
        "spec.bogus",
    ]
    by_field = dict(e.split(": ", 1) for e in errors)
    assert by_field["spec.model.name"] == "field required"
    assert by_field["spec.bogus"] == "unknown field"
    assert "(got -1)" in by_field["spec.replicas"]
    assert "'sim', 'vllm' or 'sglang'" in by_field["spec.engine.kind"]
    assert "'8B'" in by_field["spec.model.parameters"]
    assert all("\n" not in e for e in errors)


def test_cross_field_errors_are_all_listed(make_spec: Callable[..., ModelService]) -> None:
    errors = _errors(
        {
            "metadata": {"name": "pd"},
            "spec": {
                "model": {"name": "x", "servedNames": ["a", "a"]},
                "role": "both",
                "prefill": {"replicas": 1, "parallelism": {"data": 4, "dataLocal": 3}},
                "parallelism": {"data": 2, "dataLocal": 4},
                "loras": [
                    {"name": "a", "path": "/p"},
                    {"name": "b", "path": "/p"},
                    {"name": "b", "path": "/q"},
                ],
                "restart": {"backoffInitialSeconds": 10, "backoffMaxSeconds": 1},
                "health": {"path": "health"},
                "router": {"objectives": [{"name": "o"}, {"name": "o"}]},
            },
        }
    )
    assert errors == [
        "spec.parallelism.dataLocal: 4 exceeds data (2)",
        "spec.prefill.parallelism.dataLocal: data (4) is not a multiple of dataLocal (3)",
        "spec.role: must be 'decode' when spec.prefill is set (got 'both'); "
        "the main group serves decode in P/D",
        "spec.kvTransfer: required for P/D roles (prefill/decode need a KV connector)",
        "spec.model.servedNames: duplicate names ['a']",
        "spec.loras: duplicate adapter names ['b']",
        "spec.loras: adapter names ['a'] collide with served model names",
        "spec.restart.backoffInitialSeconds: 10.0 exceeds backoffMaxSeconds (1.0)",
        "spec.health.path: must start with '/' (got 'health')",
        "spec.router.objectives: duplicate names ['o']",
    ]


def test_load_specs_collects_errors_across_files_and_documents(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("metadata: {name: a}\nspec: {model: {name: x}}\n")
    multi = tmp_path / "multi.yaml"
    multi.write_text(
        "metadata: {name: b}\nspec: {model: {name: x}, replicas: -2}\n---\n"
        "metadata: {name: a}\nspec: {model: {name: y}}\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("metadata: {name: c\nspec: [\n")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SpecError) as exc:
        load_specs([good, multi, broken, missing])
    errs = exc.value.errors
    assert (
        errs[0] == f"{multi}[0]: spec.replicas: Input should be greater than or equal to 0 (got -2)"
    )
    assert errs[1].startswith(f"{broken}: line 2 column ") and "invalid YAML" in errs[1]
    assert errs[2].startswith(f"{missing}: cannot read: ")
    assert errs[3] == "metadata.name: default/a is declared 2 times"
    assert len(errs) == 4
    text = exc.value.render()
    assert text.splitlines()[0] == "invalid ModelService spec: 4 error(s)"


def test_examples_are_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    specs = load_specs(files)
    assert {s.spec.engine.kind for s in specs} >= {"sim", "vllm"}


def test_defaults_and_camel_case_round_trip(make_spec: Callable[..., ModelService]) -> None:
    ms = make_spec("r", model={"name": "x", "parameters": "1.5B"}, kvCache={"budgetGiB": 2})
    s = ms.spec
    assert s.model.parameter_count == 1_500_000_000
    assert s.kv_cache.budget_gib == 2
    assert s.engine.python_hash_seed == "42" and s.engine.prefix_caching_hash_algo == "sha256"
    assert ms.served_names == ["r"] and ms.pool_name == "r"
    dumped = ms.model_dump(by_alias=True, mode="json")
    assert "kvCache" in dumped["spec"] and "budgetGiB" in dumped["spec"]["kvCache"]
    assert ModelService.model_validate(dumped) == ms


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (8030261248, 8030261248),
        ("8B", 8 * 10**9),
        ("560M", 560 * 10**6),
        ("1.5e9", 1.5e9),
        (7.0e9, 7 * 10**9),
        ("1T", 10**12),
    ],
)
def test_parse_count(value: Any, count: float) -> None:
    assert parse_count(value) == count


@pytest.mark.parametrize("value", ["eight", True, "8X", None, [8]])
def test_parse_count_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_count(value)


def test_python_hash_seed_must_be_a_32_bit_integer(make_spec: Callable[..., Any]) -> None:
    errors = _errors(
        {
            "metadata": {"name": "s"},
            "spec": {"model": {"name": "x"}, "engine": {"pythonHashSeed": "4294967296"}},
        }
    )
    assert errors == [
        "spec.engine.pythonHashSeed: PYTHONHASHSEED must be in 0..4294967295 (got '4294967296')"
    ]
    assert _errors(
        {
            "metadata": {"name": "s"},
            "spec": {"model": {"name": "x"}, "engine": {"pythonHashSeed": "random"}},
        }
    )[0].startswith("spec.engine.pythonHashSeed: String should match pattern")
