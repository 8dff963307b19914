"""A Hugging Face tokenizer plus its chat template: the token ids vLLM would compute."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from llmd_sdk.bounded_cache import TwoGenCache
from llmd_sdk.tokenizer import chat_template as templating

BUILTIN_TOKENIZER_DIR = Path(__file__).with_name("builtin")
_SHORT_TEXT = 2048  # characters
_CHUNKED_TEXT = 8192  # characters: above this, splittable tokenizers encode chunks in parallel
_CHUNK = 4096
# Chunks kept with their ids (about 4 KiB of text and ~1k ids each: ~10 MiB at this size;
# 0 turns the cache off).
CHUNK_CACHE_ENTRIES = 1024
# A single ASCII space between two visible ASCII characters starts a new pre-token for the
# built-in tokenizer's pattern (` ?[^\s]+|\s+`), so cutting the text there cannot change the ids.
_SAFE_CUT = re.compile(r"(?<=[!-~]) (?=[!-~])")
_SPLITTABLE_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {
            "type": "Split",
            "pattern": {"Regex": " ?[^\\s]+|\\s+"},
            "behavior": "Isolated",
            "invert": False,
        },
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}


def _splittable(backend: tokenizers.Tokenizer) -> bool:
    """True when cutting at `_SAFE_CUT` provably leaves the token ids unchanged."""
    try:
        spec = json.loads(backend.to_str())
    except (ValueError, TypeError):
        return False
    return spec.get("normalizer") is None and spec.get("pre_tokenizer") == _SPLITTABLE_PRE_TOKENIZER


def _chunks(text: str) -> list[str]:
    out: list[str] = []
    start = 0
    while len(text) - start > _CHUNK:
        m = _SAFE_CUT.search(text, start + _CHUNK)
        if m is None:
            break
        out.append(text[start : m.start()])
        start = m.start()
    out.append(text[start:])
    return out


_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _pick_template(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        picked = named.get("default") or next(iter(named.values()), None)
        return picked if isinstance(picked, str) else None
    return None


class Tokenizer:
    """Encodes, decodes and renders chat prompts exactly as vLLM does for one model.

    Build one with `load_tokenizer`. Instances are thread-safe; the only state that changes is
    the chunk cache (see `encode`).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        config: Mapping[str, Any] | None = None,
        *,
        chat_template_source: str | None = None,
        path: Path | None = None,
        name: str = "custom",
        chunk_cache_entries: int = CHUNK_CACHE_ENTRIES,
    ) -> None:
        self._tok = backend
        cfg = dict(config or {})
        self.path = path
        self.name = name
        self.special_tokens: dict[str, str] = {}
        for key in _SPECIAL_TOKEN_KEYS:
            text = _token_text(cfg.get(key))
            if text is not None:
                self.special_tokens[key] = text
        extra = cfg.get("additional_special_tokens")
        self._additional = [t for t in (_token_text(x) for x in extra or []) if t]
        self.chat_template = chat_template_source or _pick_template(cfg.get("chat_template"))
        self.model_max_length = int(cfg.get("model_max_length") or 0) or None
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token_id = backend.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = backend.token_to_id(self.eos_token) if self.eos_token else None
        self._split = _splittable(backend)
        self._chunk_cache: TwoGenCache[str, list[int]] | None = (
            TwoGenCache(chunk_cache_entries) if self._split and chunk_cache_entries >= 2 else None
        )
        self.all_special_ids: frozenset[int] = frozenset(
            i
            for i in (backend.token_to_id(t) for t in self.special_tokens.values())
            if i is not None
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds what the post-processor adds (BOS).

        Long texts for a splittable tokenizer (the built-in one) are cut into chunks at
        pre-token boundaries; without special tokens (chat prompts) their ids come from a
        bounded cache of recent chunks, so a shared prefix is tokenized once, not per request.
        """
        if len(text) < _SHORT_TEXT:
            # A batch call costs a thread-pool round trip: slower for short texts.
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if self._split and len(text) > _CHUNKED_TEXT:
            chunks = _chunks(text)
            if not add_special_tokens and self._chunk_cache is not None:
                return self._encode_chunks_cached(chunks, self._chunk_cache)
            # Long prompts: encode chunks cut at pre-token boundaries in parallel, then apply
            # the post-processor (BOS) to the joined encoding. Same ids, about half the time.
            parts = self._tok.encode_batch_fast(chunks, add_special_tokens=False)
            merged = tokenizers.Encoding.merge(parts)
            return self._tok.post_process(merged, None, add_special_tokens).ids
        # encode_batch_fast skips offset tracking, the costliest part vLLM never uses.
        return self._tok.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

    def _encode_chunks_cached(
        self, chunks: list[str], cache: TwoGenCache[str, list[int]]
    ) -> list[int]:
        """Ids of the joined chunks, encoding only those not seen recently.

        Chunk boundaries depend only on the text before them, so prompts sharing a long prefix
        (a system prompt, a conversation's earlier turns) cut it into the same chunks, and
        only the chunks after the point where they differ are tokenized again. Without special
        tokens the post-processor adds nothing, so the ids are the chunks' ids joined.
        """
        found = [cache.lookup(c) for c in chunks]
        missing = [c for c, ids in zip(chunks, found, strict=True) if ids is None]
        if missing:
            encoded = iter(self._tok.encode_batch_fast(missing, add_special_tokens=False))
            for i, ids in enumerate(found):
                if ids is None:
                    ids = found[i] = next(encoded).ids
                    cache.put(chunks[i], ids)
        out: list[int] = []
        for ids in found:
            assert ids is not None
            out.extend(ids)
        return out

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """`encode` for many texts at once (in parallel where the library can)."""
        return [
            e.ids
            for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
        ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary strings of `ids` (as ``/tokenize`` returns with ``return_token_strs``)."""
        return [self._tok.id_to_token(i) or "" for i in ids]

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt string vLLM renders for a chat request.

        Raises `ChatTemplateError` (a `ValueError`) when there is no template or it fails.
        """
        source = chat_template or self.chat_template
        if not source:
            raise templating.ChatTemplateError(
                "chat_template: the tokenizer defines no chat template, so chat requests "
                "cannot be rendered; give one with --chat-template"
            )
        variables: dict[str, Any] = dict(self.special_tokens)
        if self._additional:
            variables["additional_special_tokens"] = list(self._additional)
        variables.update(template_kwargs)
        return templating.render(
            source,
            messages,
            variables,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            continue_final_message=continue_final_message,
        )

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> list[int]:
        """Token ids of a chat request: render, then encode without adding special tokens.

        vLLM's chat requests default to ``add_special_tokens=False`` because the template
        writes the BOS token itself.
        """
        return self.encode(self.apply_chat_template(messages, **kwargs), add_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"tokenizer: {path} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"tokenizer: {path} must hold a JSON object")
    return data


def load_tokenizer(
    path: str | Path | None = None, *, chat_template: str | Path | None = None
) -> Tokenizer:
    """Load a Hugging Face tokenizer, or the built-in one when `path` is None.

    `path` is a directory holding ``tokenizer.json`` (and optionally ``tokenizer_config.json``,
    ``chat_template.jinja`` or ``chat_template.json``) or the ``tokenizer.json`` file itself.
    `chat_template` overrides the template: Jinja source, or a path to a file holding it.
    Nothing is downloaded; a missing file is a one-line `ValueError`.
    """
    builtin = path is None
    base = BUILTIN_TOKENIZER_DIR if path is None else Path(path).expanduser()
    if base.is_dir():
        directory, tok_file = base, base / "tokenizer.json"
    else:
        directory, tok_file = base.parent, base
    if not tok_file.is_file():
        raise ValueError(f"tokenizer: no tokenizer.json at {tok_file}")
    try:
        backend = tokenizers.Tokenizer.from_file(str(tok_file))
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise ValueError(f"tokenizer: cannot load {tok_file}: {exc}") from None
    config: dict[str, Any] = {}
    cfg_file = directory / "tokenizer_config.json"
    if cfg_file.is_file():
        config = _read_json(cfg_file)
    template: str | None = None
    if chat_template is not None:
        candidate = Path(chat_template) if not str(chat_template).count("{") else None
        if candidate is not None and candidate.is_file():
            template = candidate.read_text(encoding="utf-8")
        else:
            template = str(chat_template)
    elif not config.get("chat_template"):
        if (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        elif (directory / "chat_template.json").is_file():
            template = _pick_template(
                _read_json(directory / "chat_template.json").get("chat_template")
            )
    return Tokenizer(
        backend,
        config,
        chat_template_source=template,
        path=directory,
        name="builtin" if builtin else str(base),
    )
