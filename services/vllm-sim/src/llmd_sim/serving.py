"""The OpenAI endpoints' logic: parse, tokenize, plan, submit to an engine, shape the answer.

Mirrors vLLM's ``serving_chat`` / ``serving_completion``: chat prompts are rendered with the chat
template and encoded without special tokens, completion prompts with them; a prompt that does not
fit ``max_model_len`` (or leaves no room for ``max_tokens``) is a 400 with vLLM's message; an
unknown model or adapter is a 404. ``n`` and batched prompts give several choices, each its own
engine request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    decode_json,
    validate_request,
)
from llmd_sdk.tokenizer import ChatTemplateError, Tokenizer

from llmd_sim import responses as R
from llmd_sim.engine import LoRA, Request
from llmd_sim.generation import Detokenizer, OutputPlanner
from llmd_sim.lora import LoRARegistry
from llmd_sim.runner import EngineRunner, Stream

DP_RANK_HEADER = "x-data-parallel-rank"
_LONG_TEXT = 16_384  # characters: tokenize off the event loop beyond this


@dataclass(slots=True)
class Job:
    """One API request fanned out into engine requests (one per prompt x n)."""

    rid: str
    created: int
    model: str
    chat: bool
    streams: list[Stream] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)
    include_usage: bool = False
    continuous_usage: bool = False
    runner: EngineRunner | None = None


class Serving:
    def __init__(
        self,
        *,
        model_names: list[str],
        tokenizer: Tokenizer,
        planner: OutputPlanner,
        runners: list[EngineRunner],
        loras: LoRARegistry,
        max_model_len: int,
        kv_transfer_enabled: bool,
    ) -> None:
        self.model_names = model_names
        self.tokenizer = tokenizer
        self.planner = planner
        self.runners = runners
        self.loras = loras
        self.max_model_len = max_model_len
        self.kv_transfer_enabled = kv_transfer_enabled
        self._ids = itertools.count()

    # ----- helpers ----------------------------------------------------------------------------
    def pick_runner(self, headers: Mapping[str, str]) -> EngineRunner:
        raw = headers.get(DP_RANK_HEADER)
        if raw is not None:
            try:
                rank = int(raw)
            except ValueError:
                raise OpenAIError(400, f"X-data-parallel-rank: {raw!r} is not an integer") from None
            if not 0 <= rank < len(self.runners):
                raise OpenAIError(
                    400,
                    f"X-data-parallel-rank: {rank} is out of range (data parallel size "
                    f"{len(self.runners)})",
                )
            return self.runners[rank]
        if len(self.runners) == 1:
            return self.runners[0]
        return min(self.runners, key=lambda r: r.load)

    async def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if len(text) > _LONG_TEXT:
            return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens)
        return self.tokenizer.encode(text, add_special_tokens)

    def render_chat(self, doc: dict[str, Any]) -> str:
        messages = doc.get("messages")
        if not isinstance(messages, list):
            raise OpenAIError(400, "messages: field required", param="messages")
        add_gen = _opt_bool(doc, "add_generation_prompt", True)
        cont = _opt_bool(doc, "continue_final_message", False)
        kwargs = doc.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise OpenAIError(400, "chat_template_kwargs: must be an object")
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=add_gen and not cont,
                continue_final_message=cont,
                tools=doc.get("tools"),
                documents=doc.get("documents"),
                **kwargs,
            )
        except ChatTemplateError as exc:
            raise OpenAIError(400, str(exc)) from None

    def _check_length(self, prompt_len: int, max_tokens: int | None) -> None:
        mml = self.max_model_len
        if prompt_len >= mml:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {mml} tokens. However, your request has "
                f"{prompt_len} input tokens. Please reduce the length of the input messages.",
            )
        if max_tokens is not None and max_tokens > mml - prompt_len:
            raise OpenAIError(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
                f"maximum context length is {mml} tokens and your request has {prompt_len} input "
                f"tokens ({max_tokens} > {mml} - {prompt_len}).",
                param="max_tokens",
            )

    # ----- inference --------------------------------------------------------------------------
    async def start(self, body: bytes, headers: Mapping[str, str], chat: bool) -> Job:
        """Validate and submit; raises `OpenAIError` for anything vLLM would refuse."""
        doc = decode_json(body)
        req = validate_request(doc, "chat" if chat else "completion")
        lora = self.loras.resolve(req.model)
        n = req.n
        max_tokens = req.max_output_tokens
        if max_tokens is not None and max_tokens < 1:
            raise OpenAIError(400, "max_tokens: must be at least 1", param="max_tokens")
        seed = doc.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise OpenAIError(400, "seed: must be an integer", param="seed")
        kv_params = doc.get("kv_transfer_params")
        if kv_params is not None and not isinstance(kv_params, dict):
            raise OpenAIError(400, "kv_transfer_params: must be an object")
        if not self.kv_transfer_enabled:
            kv_params = None
        opts = req.stream_options
        rid_base = headers.get("x-request-id") or os.urandom(16).hex()
        job = Job(
            rid=("chatcmpl-" if chat else "cmpl-") + rid_base,
            created=int(time.time()),
            model=req.model,
            chat=chat,
            include_usage=bool(req.stream and opts and opts.include_usage),
            continuous_usage=bool(req.stream and opts and opts.continuous_usage_stats),
        )
        prompts = await self._prompts(req, doc, chat)
        runner = self.pick_runner(headers)
        job.runner = runner
        salt = req.cache_salt
        try:
            for p_idx, (ids, echo_text) in enumerate(prompts):
                self._check_length(len(ids), max_tokens)
                job.prompt_lens.append(len(ids))
                for i in range(n):
                    plan = self.planner.plan(
                        echo_text,
                        ids if echo_text is None else None,
                        max_tokens,
                        None if seed is None else seed + p_idx * n + i,
                    )
                    er = Request(
                        f"{rid_base}-{next(self._ids)}",
                        ids,
                        plan.token_ids,
                        stop_at_end=plan.stop_at_end,
                        lora=lora,
                        cache_salt=salt,
                        kv_transfer_params=dict(kv_params) if kv_params else None,
                    )
                    job.streams.append(runner.submit(er, req.stream, max_tokens))
        except ValueError as exc:
            self.cancel(job)
            raise OpenAIError(400, str(exc)) from None
        return job

    async def _prompts(
        self, req: ChatCompletionRequest | CompletionRequest, doc: dict[str, Any], chat: bool
    ) -> list[tuple[list[int], str | None]]:
        """Each prompt's token ids and the text `echo` mode returns (None: echo the ids)."""
        if chat:
            assert isinstance(req, ChatCompletionRequest)
            text = self.render_chat(doc)
            add_special = _opt_bool(doc, "add_special_tokens", False)
            ids = await self._encode(text, add_special)
            user = [m for m in req.messages if m.role == "user"]
            return [(ids, user[-1].text() if user else "")]
        assert isinstance(req, CompletionRequest)
        add_special = _opt_bool(doc, "add_special_tokens", True)
        p = req.prompt
        if isinstance(p, str):
            return [(await self._encode(p, add_special), p)]
        if not p:
            raise OpenAIError(400, "prompt: must not be empty", param="prompt")
        if isinstance(p[0], int):
            return [(self._valid_ids(p), None)]  # type: ignore[arg-type,unused-ignore]
        if isinstance(p[0], list):
            return [(self._valid_ids(ids), None) for ids in p]  # type: ignore[arg-type,unused-ignore]
        return [(await self._encode(str(s), add_special), str(s)) for s in p]

    def _valid_ids(self, ids: list[int]) -> list[int]:
        vocab = self.tokenizer.vocab_size
        if not ids:
            raise OpenAIError(400, "prompt: token id list must not be empty", param="prompt")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise OpenAIError(400, f"prompt: token id {bad} is out of vocabulary (size {vocab})")
        return list(ids)

    def cancel(self, job: Job) -> None:
        if job.runner is None:
            return
        for s in job.streams:
            if not s.done:
                job.runner.abort(s.req.request_id)

    async def complete(self, job: Job) -> dict[str, Any]:
        """Wait for every choice, then build the non-streaming body."""
        try:
            for s in job.streams:
                while not s.done:
                    await s.wait()
        except asyncio.CancelledError:
            self.cancel(job)
            raise
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for idx, s in enumerate(job.streams):
            r = s.req
            text = self.tokenizer.decode(r.output_token_ids)
            completion_tokens += r.num_output_tokens
            reason = r.finish_reason
            if job.chat:
                choices.append(R.chat_choice(idx, text, reason))
            else:
                choices.append(R.completion_choice(idx, text, reason))
        u = self._usage(job, completion_tokens)
        kvp = job.streams[0].req.kv_transfer_result if job.streams else None
        build = R.chat_completion if job.chat else R.completion
        return build(job.rid, job.created, job.model, choices, u, kvp)

    def _usage(self, job: Job, completion_tokens: int) -> dict[str, Any]:
        n = max(1, len(job.streams) // max(1, len(job.prompt_lens)))
        firsts = job.streams[::n]
        cached = sum(max(0, s.req.num_cached_tokens) for s in firsts)
        return R.usage(sum(job.prompt_lens), completion_tokens, cached)

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        """SSE chunks: one per engine step that produced text, then usage and ``[DONE]``."""
        chat, rid, created, model = job.chat, job.rid, job.created, job.model
        clean = self.planner.clean_pieces if self.planner.mode == "random" else None
        detoks = [Detokenizer(self.tokenizer, clean) for _ in job.streams]
        writers = [R.ChunkWriter(rid, created, model, i, chat) for i in range(len(job.streams))]
        started = [False] * len(job.streams)
        try:
            pending = set(range(len(job.streams)))
            while pending:
                out: list[bytes] = []
                for idx in list(pending):
                    s = job.streams[idx]
                    while s.pending:
                        count = s.pending.popleft()
                        new_ids = s.req.output_plan[s.sent : count]
                        s.sent = count
                        delta = detoks[idx].add(new_ids)
                        last = s.done and not s.pending
                        finish = s.req.finish_reason if last else None
                        first = not started[idx]
                        if not first and finish is None and not job.continuous_usage:
                            out.append(writers[idx].text(delta))  # the common, fast case
                            continue
                        started[idx] = True
                        if chat:
                            if first:
                                role = {"role": "assistant", "content": ""}
                                out.append(
                                    R.sse(R.chat_chunk(rid, created, model, idx, role, None))
                                )
                            d = {"content": delta} if delta or not finish else {}
                            chunk = R.chat_chunk(rid, created, model, idx, d, finish)
                        else:
                            chunk = R.completion_chunk(rid, created, model, idx, delta, finish)
                        if job.continuous_usage:
                            chunk["usage"] = R.usage(
                                job.prompt_lens[0], s.sent, s.req.num_cached_tokens
                            )
                        out.append(R.sse(chunk))
                    if s.done and not s.pending:
                        pending.discard(idx)
                if out:
                    yield b"".join(out)
                if pending:
                    waiters = [job.streams[i] for i in pending]
                    if not any(w.pending or w.done for w in waiters):
                        await _first(waiters)
            if job.include_usage:
                total = sum(s.req.num_output_tokens for s in job.streams)
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield R.sse(R.usage_chunk(rid, created, model, obj, self._usage(job, total)))
            yield R.SSE_DONE
        finally:
            self.cancel(job)

    # ----- tokenization API -------------------------------------------------------------------
    async def tokenize(self, body: bytes) -> dict[str, Any]:
        doc = decode_json(body)
        self._check_model(doc)
        return_strs = _opt_bool(doc, "return_token_strs", False)
        if "messages" in doc:
            text = self.render_chat(doc)
            ids = await self._encode(text, _opt_bool(doc, "add_special_tokens", False))
        elif isinstance(doc.get("prompt"), str):
            ids = await self._encode(doc["prompt"], _opt_bool(doc, "add_special_tokens", True))
        else:
            raise OpenAIError(400, "prompt: field required (a string), or messages", param="prompt")
        return {
            "count": len(ids),
            "max_model_len": self.max_model_len,
            "tokens": ids,
            "token_strs": self.tokenizer.convert_ids_to_tokens(ids) if return_strs else None,
        }

    def detokenize(self, body: bytes) -> dict[str, Any]:
        doc = decode_json(body)
        self._check_model(doc)
        tokens = doc.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise OpenAIError(400, "tokens: must be a list of integers", param="tokens")
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise OpenAIError(400, f"tokens: token id {bad} is out of vocabulary (size {vocab})")
        return {"prompt": self.tokenizer.decode(tokens)}

    def _check_model(self, doc: dict[str, Any]) -> LoRA | None:
        model = doc.get("model")
        if model is None:
            return None
        if not isinstance(model, str):
            raise OpenAIError(400, "model: must be a string", param="model")
        return self.loras.resolve(model)


def _opt_bool(doc: dict[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise OpenAIError(400, f"{key}: must be a boolean", param=key)
    return value


async def _first(streams: list[Stream]) -> None:
    """Wait until any of `streams` has something new."""
    if len(streams) == 1:
        await streams[0].wait()
        return
    tasks = [asyncio.ensure_future(s.wait()) for s in streams]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
