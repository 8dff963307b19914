"""Engine identity from KV-event topics."""

from __future__ import annotations

import pytest
from llmd_sdk.kvcache.topics import TopicPattern


def test_llm_d_convention() -> None:
    p = TopicPattern()
    assert p.parse(b"kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B") == (
        "10.0.0.7:8000",
        "meta-llama/Llama-3.1-8B",
    )
    assert p.parse(b"kv@10.0.0.7:8000@org/model@rev") == ("10.0.0.7:8000", "org/model@rev")
    assert p.format("10.0.0.7:8000", "m") == "kv@10.0.0.7:8000@m"


@pytest.mark.parametrize("topic", [b"", b"kv@", b"kv@host:1", b"other@a:1@m", b"\xff\xfe"])
def test_non_matching_topics(topic: bytes) -> None:
    assert TopicPattern().parse(topic) is None


def test_custom_patterns() -> None:
    p = TopicPattern("engines/{model}/{endpoint}")
    assert p.parse(b"engines/m/10.0.0.1:8000") == ("10.0.0.1:8000", "m")
    q = TopicPattern("ep.{endpoint}")
    assert q.parse(b"ep.10.0.0.1:8000") == ("10.0.0.1:8000", None)
    with pytest.raises(ValueError, match="topic_pattern"):
        TopicPattern("kv@{model}")
