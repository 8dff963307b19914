"""The routing benchmark's workload: shared-prefix, multi-turn chat, generated from a seed.

Groups of users share one long system prompt (a product's assistant, a tenant's instructions).
Each user holds one conversation of `turns` turns; turn k's prompt is the system prompt, the
earlier turns (questions and the recorded answers) and a new question, so histories grow and
every turn extends the previous one's prefix. Conversations start as a Poisson process; the
turns of one conversation are separated by exponential think times. Everything is open loop:
a turn's arrival does not wait for the previous answer (the history carries the recorded
answer, as a replayed dataset would), so every router sees the same trace.

Times are model seconds (what a GPU would take); the live driver divides them by the engines'
time scale. Text is pseudo-words from a seeded vocabulary, so the same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    seed: int = 0
    groups: int = 8
    users_per_group: int = 4
    turns: int = 4
    system_words: int = 1500
    question_words: int = 60
    answer_words: int = 90
    output_tokens: int = 96
    think_time_s: float = 4.0

    @property
    def conversations(self) -> int:
        return self.groups * self.users_per_group

    @property
    def requests(self) -> int:
        return self.conversations * self.turns

    def scaled(self, factor: float) -> WorkloadSpec:
        """The same shape with `factor` times the groups (for bigger clusters)."""
        from dataclasses import replace

        return replace(self, groups=max(1, round(self.groups * factor)))


@dataclass(slots=True)
class ChatTurn:
    """One request of the trace."""

    request_id: str
    arrival_s: float
    group: int
    conversation: int
    turn: int
    messages: list[dict[str, str]]
    max_tokens: int
    # Words of the shared system prompt (the part every turn of the group starts with).
    shared_words: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def _vocabulary(rng: random.Random, size: int = 4096) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9,
               1.5, 1, 0.8, 0.15, 0.15, 0.1, 0.07]  # fmt: skip
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((2, 3, 3, 4, 4, 5, 5, 6, 7, 8))
        words.add("".join(rng.choices(letters, weights, k=n)))
    return sorted(words)


def _text(rng: random.Random, vocab: list[str], words: int) -> str:
    out = rng.choices(vocab, k=words)
    # Sentences, so the text tokenizes like prose rather than one run of letters.
    for i in range(11, len(out), 12):
        out[i] += "."
    return " ".join(out)


def build_trace(spec: WorkloadSpec, rate_rps: float) -> list[ChatTurn]:
    """Every turn of every conversation, in arrival order, at `rate_rps` requests per second."""
    if rate_rps <= 0:
        raise ValueError("rate_rps: must be positive")
    rng = random.Random(spec.seed)
    vocab = _vocabulary(rng)
    systems = [
        f"You are assistant #{g} of the benchmark. " + _text(rng, vocab, spec.system_words)
        for g in range(spec.groups)
    ]
    # Content does not depend on the rate; arrival times do, through common random numbers:
    # at every rate the same conversations start in the same order, at times that scale with
    # 1/rate, and keep the same think times. A higher rate is the same trace compressed, so a
    # sweep's rates differ in load, not in the luck of the draw.
    starts = random.Random(f"{spec.seed}/starts")
    thinks = random.Random(f"{spec.seed}/thinks")
    session_rate = rate_rps / spec.turns
    order = list(range(spec.conversations))
    rng.shuffle(order)
    turns: list[ChatTurn] = []
    start = 0.0
    for conv in order:
        start += starts.expovariate(1.0) / session_rate
        group = conv % spec.groups
        history: list[dict[str, str]] = [{"role": "system", "content": systems[group]}]
        t = start
        for k in range(spec.turns):
            if k:
                t += thinks.expovariate(1.0 / spec.think_time_s)
            question = f"User {conv}, question {k}: " + _text(rng, vocab, spec.question_words)
            history.append({"role": "user", "content": question})
            turns.append(
                ChatTurn(
                    request_id=f"c{conv}-t{k}",
                    arrival_s=t,
                    group=group,
                    conversation=conv,
                    turn=k,
                    messages=[dict(m) for m in history],
                    max_tokens=spec.output_tokens,
                    shared_words=spec.system_words,
                )
            )
            history.append({"role": "assistant", "content": _text(rng, vocab, spec.answer_words)})
    turns.sort(key=lambda r: (r.arrival_s, r.request_id))
    return turns
