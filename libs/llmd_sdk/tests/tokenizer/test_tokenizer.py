import json
from pathlib import Path

import pytest
from llmd_sdk.tokenizer import (
    BUILTIN_TOKENIZER_DIR,
    ChatTemplateError,
    build_builtin,
    load_tokenizer,
)
from llmd_sdk.tokenizer.tokenizer import _chunks
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers


def test_builtin_is_a_real_hf_tokenizer_with_its_special_tokens() -> None:
    tok = load_tokenizer()
    assert tok.vocab_size == 8192
    assert (tok.bos_token, tok.bos_token_id) == ("<|bos|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|eos|>", 1)
    # Any tool that reads tokenizer.json sees the same ids.
    raw = HFTokenizer.from_file(str(BUILTIN_TOKENIZER_DIR / "tokenizer.json"))
    text = "Cache-aware routing sends each request to the engine that holds its prefix."
    assert tok.encode(text) == raw.encode(text).ids
    plain = raw.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, add_special_tokens=False) == plain


@pytest.mark.parametrize(
    "text",
    ["", "hello", "  two  spaces\n\ttab", "naïve café 日本語 🚀", "def f(x):\n    return x + 1\n"],
)
def test_encode_decode_round_trips_any_text(text: str) -> None:
    tok = load_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_add_special_tokens_prepends_bos_only() -> None:
    tok = load_tokenizer()
    plain = tok.encode("hello world", add_special_tokens=False)
    assert tok.encode("hello world") == [tok.bos_token_id, *plain]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.decode(tok.encode("hello world"), skip_special_tokens=False).startswith("<|bos|>")


def test_builtin_chat_template_renders_as_vllm_would() -> None:
    tok = load_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
        },
    ]
    assert tok.apply_chat_template(messages) == (
        "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=False)
    assert no_prompt == "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n"
    # Chat prompts are encoded without adding special tokens: exactly one BOS.
    ids = tok.encode_chat(messages)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(messages)


def test_token_strings_match_ids() -> None:
    tok = load_tokenizer()
    ids = tok.encode("hello world", add_special_tokens=False)
    strs = tok.convert_ids_to_tokens(ids)
    assert len(strs) == len(ids) and "".join(strs).replace("Ġ", " ") == "hello world"


def _write_tokenizer(directory: Path, config: dict[str, object] | None) -> None:
    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, "hello": 3, "world": 4, "Hi": 5}
    raw = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))


LLAMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_custom_tokenizer_dir_and_file_with_added_token_dicts(tmp_path: Path) -> None:
    _write_tokenizer(
        tmp_path / "m",
        {
            "bos_token": {"content": "<s>", "special": True},
            "eos_token": "</s>",
            "chat_template": LLAMA_LIKE,
        },
    )
    for where in (tmp_path / "m", tmp_path / "m" / "tokenizer.json"):
        tok = load_tokenizer(where)
        assert tok.encode("hello world") == [3, 4]
        assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
            "<s>[user]Hi</s>[assistant]"
        )


def test_openai_format_template_gets_content_parts(tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}{% for part in m['content'] %}<{{ part['text'] }}>"
        "{% endfor %}{% endfor %}"
    )
    _write_tokenizer(tmp_path, {"chat_template": template})
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "plain"}]) == "<plain>"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert tok.apply_chat_template([{"role": "user", "content": parts}]) == "<a><b>"


def test_chat_template_file_fallback_and_override(tmp_path: Path) -> None:
    _write_tokenizer(tmp_path, {"bos_token": "<s>"})
    (tmp_path / "chat_template.jinja").write_text("J:{{ messages[0]['content'] }}")
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "J:x"
    override = load_tokenizer(tmp_path, chat_template="O:{{ messages[0]['content'] }}")
    assert override.apply_chat_template([{"role": "user", "content": "x"}]) == "O:x"


def test_template_features_hf_templates_rely_on(tmp_path: Path) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{{ messages | tojson }}|{{ tools }}"
    )
    _write_tokenizer(tmp_path, {"chat_template": template})
    tok = load_tokenizer(tmp_path)
    rendered = tok.apply_chat_template([{"role": "user", "content": "café"}])
    assert rendered == '[{"role": "user", "content": "café"}]|None'
    with pytest.raises(ChatTemplateError, match="first must be user"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])


def test_errors_are_one_line_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load"):
        load_tokenizer(tmp_path / "bad")
    _write_tokenizer(tmp_path / "notemplate", {"bos_token": "<s>"})
    tok = load_tokenizer(tmp_path / "notemplate")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].role"):
        load_tokenizer().apply_chat_template([{"content": "x"}])
    _write_tokenizer(tmp_path / "syntax", {"chat_template": "{% for %}"})
    with pytest.raises(ChatTemplateError, match="syntax error"):
        load_tokenizer(tmp_path / "syntax").apply_chat_template([{"role": "user", "content": "x"}])


def test_builtin_rebuilds_bit_for_bit(tmp_path: Path) -> None:
    committed = json.loads((BUILTIN_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    _, digest = build_builtin.corpus_lines(build_builtin.corpus_files())
    if digest != committed["llmd_corpus_sha256"]:
        pytest.skip("this CPython's stdlib is not the corpus the built-in tokenizer was trained on")
    build_builtin.build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / name).read_bytes() == (BUILTIN_TOKENIZER_DIR / name).read_bytes()


def _random_text(seed: int, n: int) -> str:
    import random

    rnd = random.Random(seed)
    alphabet = "abcdefghij KLMNOP 0123 .,;:!?()[]{}'\"\n\t  é☕日本"
    words = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))) for _ in range(n)]
    return rnd.choice(["", " ", "  ", "\n"]).join(words) if seed % 2 else " ".join(words)


@pytest.mark.parametrize("seed", range(6))
def test_long_texts_encode_in_chunks_to_the_same_ids(seed: int) -> None:
    tok = load_tokenizer()
    raw = HFTokenizer.from_file(str(BUILTIN_TOKENIZER_DIR / "tokenizer.json"))
    text = _random_text(seed, 4000)
    assert len(text) > 8192  # takes the chunked path
    assert len(_chunks(text)) > 1
    for special in (True, False):
        assert (
            tok.encode(text, add_special_tokens=special)
            == raw.encode(text, add_special_tokens=special).ids
        )


@pytest.mark.parametrize("seed", range(4))
def test_prompts_sharing_a_prefix_reuse_its_chunks_and_get_the_same_ids(seed: int) -> None:
    tok = load_tokenizer()
    raw = HFTokenizer.from_file(str(BUILTIN_TOKENIZER_DIR / "tokenizer.json"))
    shared = _random_text(seed, 4000)
    texts = [shared + _random_text(100 + seed * 10 + i, 300) for i in range(4)]
    for text in [*texts, *texts]:  # cold, then warm
        assert (
            tok.encode(text, add_special_tokens=False)
            == raw.encode(text, add_special_tokens=False).ids
        )
    cache = tok._chunk_cache
    assert cache is not None
    chunks_per_text = len(_chunks(texts[0]))
    # The first text misses every chunk; the other three miss only their tail past the shared
    # prefix (at most two chunks straddle it); the warm pass misses nothing.
    assert cache.misses <= chunks_per_text + 3 * 2
    assert cache.hits >= 8 * chunks_per_text - cache.misses


def test_the_chunk_cache_is_bounded_and_optional() -> None:
    from llmd_sdk.tokenizer.tokenizer import Tokenizer

    raw = HFTokenizer.from_file(str(BUILTIN_TOKENIZER_DIR / "tokenizer.json"))
    small = Tokenizer(raw, chunk_cache_entries=4)
    texts = [_random_text(seed, 4000) for seed in range(3)]
    assert sum(len(_chunks(t)) for t in texts) > 4
    for text in texts:
        assert (
            small.encode(text, add_special_tokens=False)
            == raw.encode(text, add_special_tokens=False).ids
        )
    assert small._chunk_cache is not None and len(small._chunk_cache) <= 4
    uncached = Tokenizer(raw, chunk_cache_entries=0)
    assert uncached._chunk_cache is None
    assert uncached.encode(texts[0], add_special_tokens=False) == small.encode(
        texts[0], add_special_tokens=False
    )


def test_other_tokenizers_are_not_chunked(tmp_path: Path) -> None:
    _write_tokenizer(tmp_path, {})
    assert not load_tokenizer(tmp_path)._split
