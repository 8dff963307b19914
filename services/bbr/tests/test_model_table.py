"""The model file: BBR's own document, upstream BBR ConfigMaps, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmd_bbr.model_table import TableError, parse_table

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "bbr"

NATIVE = """
baseModels: [meta-llama/Llama-3.1-8B-Instruct]
adapters:
  Qwen/Qwen3-0.6B: [sql-lora, tweet-summary]
aliases:
  llama: meta-llama/Llama-3.1-8B-Instruct
  sql: {target: sql-lora, rewrite: true}
"""

CONFIGMAPS = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: deepseek-adapters
  labels:
    inference.networking.k8s.io/bbr-managed: "true"
data:
  baseModel: deepseek/vllm-deepseek-r1
  adapters: |
    - ski-resorts
    - movie-critique
    -
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: llama}
  data:
    baseModel: meta-llama/Llama-3.1-8B-Instruct
    aliases: |
      critic: {target: movie-critique, rewrite: true}
"""


def test_native_document() -> None:
    t = parse_table(NATIVE)
    assert t.resolve("tweet-summary").base_model == "Qwen/Qwen3-0.6B"
    assert t.resolve("Qwen/Qwen3-0.6B").base_model == "Qwen/Qwen3-0.6B"
    assert t.resolve("meta-llama/Llama-3.1-8B-Instruct").base_model is not None
    llama = t.resolve("llama")
    assert (llama.model, llama.rewrite_to, llama.alias) == (
        "meta-llama/Llama-3.1-8B-Instruct",
        None,
        "llama",
    )
    sql = t.resolve("sql")
    assert (sql.model, sql.rewrite_to, sql.base_model) == (
        "sql-lora",
        "sql-lora",
        "Qwen/Qwen3-0.6B",
    )
    assert t.resolve("other").base_model is None
    assert t.summary() == {"aliases": 2, "adapters": 2, "base_models": 2}


def test_upstream_configmaps_single_and_list() -> None:
    t = parse_table(CONFIGMAPS)
    assert t.resolve("movie-critique").base_model == "deepseek/vllm-deepseek-r1"
    assert t.resolve("ski-resorts").base_model == "deepseek/vllm-deepseek-r1"
    critic = t.resolve("critic")
    assert critic.model == "movie-critique" and critic.rewrite_to == "movie-critique"
    assert t.summary()["adapters"] == 2  # the blank list entry is skipped


def test_empty_file_is_an_empty_table() -> None:
    assert len(parse_table("")) == 0
    assert len(parse_table("aliases:\nadapters:\n")) == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: [1", "line 1: not valid YAML"),
        ("- 1\n- 2", "expected a mapping at the top level, got list"),
        ("aliasses: {}", "aliasses: extra inputs are not permitted"),
        ("aliases: {a: {target: b, rewrite: maybe}}", "aliases.a.str"),
        ("aliases: {a: {rewrite: true}}", "target: field required"),
        ("aliases: {a: b, b: c}", "aliases.a: target 'b' is itself an alias"),
        ("aliases: {a: a}", "aliases.a: an alias cannot point to itself"),
        ("baseModels: [m]\naliases: {m: x}", "aliases.m: 'm' is also a served model name"),
        ("adapters: {b1: [x], b2: [x]}", "adapters.b2[0]: adapter 'x' is already mapped"),
        ('aliases: {"bad\\nname": x}', "control characters"),
        ("kind: Deployment", "kind: 'Deployment' is not a ConfigMap"),
        ("kind: ConfigMap\ndata: {}", "data.baseModel is missing or empty"),
        (
            "kind: ConfigMap\ndata: {baseModel: b, adapters: 'x: 1'}",
            "data.adapters must be a YAML list",
        ),
        (
            "kind: ConfigMap\ndata: {baseModel: b, adapters: '[a'}",
            "data.adapters is not valid YAML",
        ),
        ("baseModels: [a]\n---\nbaseModels: [7]", "document 2: baseModels.0"),
    ],
)
def test_errors_are_one_line_naming_the_field(text: str, fragment: str) -> None:
    with pytest.raises(TableError) as info:
        parse_table(text)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["models.yaml", "configmaps.yaml"])
def test_examples_load(name: str) -> None:
    t = parse_table((EXAMPLES / name).read_text(), name)
    assert len(t) > 0
