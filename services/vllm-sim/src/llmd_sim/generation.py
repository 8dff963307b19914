"""What the simulator "generates": planned output tokens, and their text as it streams.

- ``echo``: the request's own text comes back (the last user message for chat, the prompt for
  completions), cut at ``max_tokens``; shorter than that, it ends with EOS (finish "stop").
- ``random``: words drawn from the vocabulary with a seeded generator (the request's ``seed``
  when given). With ``max_tokens`` it produces exactly that many tokens (finish "length"), as a
  benchmark client expects; without, a random length of 16-256 tokens ending with EOS.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from llmd_sdk.tokenizer import Tokenizer

_WORD = re.compile(r"^(?:Ġ|▁)[a-z]{3,}$")


@dataclass(slots=True)
class OutputPlan:
    token_ids: list[int]
    stop_at_end: bool


class OutputPlanner:
    def __init__(self, tokenizer: Tokenizer, mode: str, seed: int = 0) -> None:
        if mode not in ("echo", "random"):
            raise ValueError(f"mode: {mode!r} is not 'echo' or 'random'")
        self.tokenizer = tokenizer
        self.mode = mode
        self._rng = random.Random(seed)
        strs = tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))
        words = [i for i, s in enumerate(strs) if _WORD.match(s)]
        special = tokenizer.all_special_ids
        self.words = words or [i for i in range(tokenizer.vocab_size) if i not in special]
        eos = tokenizer.eos_token_id
        self.eos: int | None = eos
        # Word tokens decode on their own: random-mode text streams without windowed decoding.
        self.clean_pieces: dict[int, str] = (
            {i: tokenizer.decode([i]) for i in words} if words else {}
        )

    def plan(
        self,
        echo_text: str | None,
        echo_ids: list[int] | None,
        max_tokens: int | None,
        seed: int | None = None,
    ) -> OutputPlan:
        if self.mode == "echo":
            src = echo_ids if echo_ids is not None else self._encode(echo_text or "")
            if max_tokens is not None and len(src) >= max_tokens:
                return OutputPlan(src[:max_tokens], stop_at_end=False)
            return OutputPlan(self._with_eos(src), stop_at_end=True)
        rng = random.Random(seed) if seed is not None else self._rng
        if max_tokens is not None:
            return OutputPlan(rng.choices(self.words, k=max_tokens), stop_at_end=False)
        n = rng.randint(16, 256)
        return OutputPlan(self._with_eos(rng.choices(self.words, k=n - 1)), stop_at_end=True)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _with_eos(self, ids: list[int]) -> list[int]:
        return [*ids, self.eos] if self.eos is not None else (ids or [self.words[0]])


class Detokenizer:
    """Incremental detokenization of one sequence, as vLLM streams it.

    Decodes a small window of recent tokens and emits only the new, complete characters (a
    byte-level token can end in the middle of a UTF-8 character).
    """

    __slots__ = ("_clean", "_ids", "_prefix", "_read", "_tok", "text")

    def __init__(self, tokenizer: Tokenizer, clean_pieces: dict[int, str] | None = None) -> None:
        self._tok = tokenizer
        self._clean = clean_pieces
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    def add(self, new_ids: list[int]) -> str:
        """Append tokens; return the text they complete (may be empty)."""
        clean = self._clean
        if clean and self._read == len(self._ids):
            try:
                delta = "".join([clean[i] for i in new_ids])
            except KeyError:
                pass
            else:
                self._prefix = self._read
                self._ids.extend(new_ids)
                self._read = len(self._ids)
                self.text += delta
                return delta
        self._ids.extend(new_ids)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        self.text += delta
        return delta
