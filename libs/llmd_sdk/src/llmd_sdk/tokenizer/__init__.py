"""Tokenization shared by every component that must agree on token ids.

The engine (vLLM or vllm-sim) hashes KV blocks over token ids; the kvmanager and the EPP compute
the same hashes from a request's text. They agree only if they tokenize exactly alike, so the
tokenizer lives here:

- `load_tokenizer(path)` loads a Hugging Face ``tokenizer.json`` with the ``tokenizers`` library and
  the chat template from ``tokenizer_config.json`` (rendered with Jinja as vLLM renders it for
  ``/v1/chat/completions``).
- `load_tokenizer(None)` loads the built-in tokenizer: a byte-level BPE of 8192 ids shipped as a
  real ``tokenizer.json`` in `BUILTIN_TOKENIZER_DIR` (see `build_builtin` for its recipe), with a
  ChatML-style template. Tools that read HF tokenizers (vLLM's ``--tokenizer``, ``vllm-router``)
  can be pointed at that directory and get identical ids.
"""

from llmd_sdk.tokenizer.chat_template import ChatTemplateError
from llmd_sdk.tokenizer.tokenizer import BUILTIN_TOKENIZER_DIR, Tokenizer, load_tokenizer

__all__ = ["BUILTIN_TOKENIZER_DIR", "ChatTemplateError", "Tokenizer", "load_tokenizer"]
