from __future__ import annotations

import pytest
from llmd_sdk.tokenizer import load_tokenizer
from llmd_sim import responses as R
from llmd_sim.generation import Detokenizer, OutputPlanner


def test_random_plans_are_seeded_and_exact_length() -> None:
    planner = OutputPlanner(load_tokenizer(), "random", seed=1)
    a = planner.plan(None, None, 20, seed=7)
    b = planner.plan(None, None, 20, seed=7)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 20 and not a.stop_at_end
    free = planner.plan(None, None, None, seed=3)
    assert (
        free.stop_at_end and free.token_ids[-1] == planner.eos and 16 <= len(free.token_ids) <= 256
    )


def test_echo_plans_cut_or_stop() -> None:
    tok = load_tokenizer()
    planner = OutputPlanner(tok, "echo")
    ids = tok.encode("one two three", add_special_tokens=False)
    cut = planner.plan("one two three", None, 2)
    assert cut.token_ids == ids[:2] and not cut.stop_at_end
    whole = planner.plan("one two three", None, 100)
    assert whole.token_ids == [*ids, tok.eos_token_id] and whole.stop_at_end


@pytest.mark.parametrize("mode", ["random", "echo"])
def test_streamed_text_equals_the_whole_decode(mode: str) -> None:
    tok = load_tokenizer()
    planner = OutputPlanner(tok, mode, seed=5)
    text = "naïve café ☕ multi-byte characters split across byte-level tokens: 日本語"
    plan = planner.plan(text, None, 64, seed=9)
    clean = planner.clean_pieces if mode == "random" else None
    detok = Detokenizer(tok, clean)
    pieces = []
    for i in range(0, len(plan.token_ids), 3):  # a few tokens per engine step
        pieces.append(detok.add(plan.token_ids[i : i + 3]))
    assert "".join(pieces) == tok.decode(plan.token_ids) == detok.text


def test_chunk_writer_is_byte_identical_to_the_full_chunk() -> None:
    for chat in (True, False):
        writer = R.ChunkWriter("id-1", 123, "model", 1, chat)
        for delta in ("", "plain", 'quote " and \\ back', "é\n\t☕"):
            full = (
                R.chat_chunk("id-1", 123, "model", 1, {"content": delta}, None)
                if chat
                else R.completion_chunk("id-1", 123, "model", 1, delta, None)
            )
            assert writer.text(delta) == R.sse(full)
