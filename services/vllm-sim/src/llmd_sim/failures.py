"""Failure injection: a fraction of inference requests fail in a chosen way.

Kinds: ``http500`` (an OpenAI-shaped 500), ``http429`` (rate limited), ``stall`` (the response
never starts within ``--stall-seconds``: clients and routers must time out), ``crash`` (the
process exits at once with status 1, as an engine dying mid-flight does). Draws come from a
generator seeded with ``--seed`` so a run is reproducible.
"""

from __future__ import annotations

import random


class FailureInjector:
    def __init__(self, rate: float, kinds: list[str], seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"failure_rate: must be within [0, 1], got {rate}")
        if rate and not kinds:
            raise ValueError("failure_kinds: at least one kind is needed with a failure rate")
        self.rate = rate
        self.kinds = list(kinds)
        self._rng = random.Random(seed)
        self.injected: dict[str, int] = dict.fromkeys(kinds, 0)

    def draw(self) -> str | None:
        """The failure to inject into this request, if any."""
        if self.rate <= 0.0 or self._rng.random() >= self.rate:
            return None
        kind = self.kinds[0] if len(self.kinds) == 1 else self._rng.choice(self.kinds)
        self.injected[kind] += 1
        return kind
