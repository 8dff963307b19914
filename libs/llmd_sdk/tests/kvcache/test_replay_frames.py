import pytest
from llmd_sdk.kvcache.events import END_SEQ, encode_seq, parse_replay_frames


@pytest.mark.parametrize(
    "frames",
    [
        [b"", b"topic", encode_seq(7), b"payload"],  # current vLLM, DEALER side
        [b"topic", encode_seq(7), b"payload"],  # current vLLM, REQ side
        [b"", encode_seq(7), b"payload"],  # older vLLM, DEALER side
        [encode_seq(7), b"payload"],  # older vLLM, REQ side
    ],
)
def test_both_replay_forms_parse(frames: list[bytes]) -> None:
    assert parse_replay_frames(frames) == (7, b"payload")


def test_end_marker_in_both_forms() -> None:
    assert parse_replay_frames([b"", b"", END_SEQ, b""]) == (-1, b"")
    assert parse_replay_frames([b"", END_SEQ, b""]) == (-1, b"")


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="frames"):
        parse_replay_frames([b"x"])
    with pytest.raises(ValueError, match="8 bytes"):
        parse_replay_frames([b"short", b"payload"])
