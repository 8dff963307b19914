"""A request as the engine sees it: token ids in, a planned sequence of output tokens out.

The simulator does not sample: the output tokens are planned when the request is admitted (echo of
the prompt, random words, or ids given by a trace). What the engine simulates is *when* each of
them is produced and what happens to the KV cache meanwhile.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

BlockHash = bytes | int


class RequestStatus(enum.IntEnum):
    WAITING = 0
    WAITING_FOR_REMOTE_KVS = 1
    RUNNING = 2
    PREEMPTED = 3
    FINISHED_STOPPED = 4
    FINISHED_LENGTH_CAPPED = 5
    FINISHED_ABORTED = 6

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


# vLLM's FinishReason strings (the `finished_reason` label of vllm:request_success).
FINISH_REASON = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(frozen=True, slots=True)
class LoRA:
    """A LoRA adapter: vLLM's LoRARequest (name, integer id, path)."""

    name: str
    int_id: int
    path: str


class Request:
    """One generation request inside an engine core.

    While a request is decoding its progress is implicit (see `EngineCore`): `num_computed_tokens`
    and `num_output_tokens` are exact only for requests that are waiting or prefilling, or after
    `EngineCore.materialize`.
    """

    __slots__ = (
        "arrival_time",
        "block_hashes",
        "blocks",
        "cache_salt",
        "dec_c0",
        "dec_last",
        "dec_out0",
        "dec_start",
        "epoch",
        "finish_status",
        "finish_time",
        "first_scheduled_time",
        "first_token_time",
        "kv_transfer_params",
        "kv_transfer_result",
        "lora",
        "max_tokens",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_external_cached_tokens",
        "num_output_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "output_plan",
        "prompt_token_ids",
        "remote_ready_time",
        "remote_tokens",
        "request_id",
        "sched_order",
        "status",
        "tokens",
        "user_data",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        output_plan: list[int],
        *,
        stop_at_end: bool = False,
        lora: LoRA | None = None,
        cache_salt: str | None = None,
        arrival_time: float = 0.0,
        kv_transfer_params: dict[str, Any] | None = None,
        user_data: Any = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError("prompt: must contain at least one token")
        if not output_plan:
            raise ValueError("max_tokens: must be at least 1")
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.output_plan = output_plan
        self.num_prompt_tokens = len(prompt_token_ids)
        self.max_tokens = len(output_plan)
        # How the request ends once its plan is exhausted: an EOS/stop ("stop") or max_tokens.
        self.finish_status = (
            RequestStatus.FINISHED_STOPPED if stop_at_end else RequestStatus.FINISHED_LENGTH_CAPPED
        )
        self.tokens = prompt_token_ids + output_plan
        self.lora = lora
        self.cache_salt = cache_salt
        self.arrival_time = arrival_time
        self.kv_transfer_params = kv_transfer_params
        self.kv_transfer_result: dict[str, Any] | None = None
        self.user_data = user_data
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.blocks: list[int] = []
        self.num_cached_blocks = 0
        self.block_hashes: list[BlockHash] = []
        self.num_cached_tokens = -1
        self.num_external_cached_tokens = 0
        self.num_preemptions = 0
        self.dec_start = -1
        self.dec_c0 = 0
        self.dec_out0 = 0
        # The step in which a decoding request samples its last token (set with dec_start).
        self.dec_last = -1
        self.epoch = 0
        self.sched_order = 0
        self.first_scheduled_time = -1.0
        self.first_token_time = -1.0
        self.finish_time = -1.0
        self.remote_ready_time = -1.0
        self.remote_tokens = 0

    @property
    def num_tokens(self) -> int:
        """Prompt plus the output tokens sampled so far (exact unless decoding)."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def decoding(self) -> bool:
        return self.dec_start >= 0

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASON.get(self.status)

    @property
    def output_token_ids(self) -> list[int]:
        return self.output_plan[: self.num_output_tokens]

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"prompt={self.num_prompt_tokens}, out={self.num_output_tokens}/{self.max_tokens})"
        )
