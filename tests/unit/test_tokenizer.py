"""GGUFTokenizer on a synthetic SentencePiece vocabulary (the real SmolLM2 one:
tests/models/test_gguf_tokenizer.py)."""

from __future__ import annotations

import logging

import pytest

from app.models.gguf.tokenizer import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    GGUFTokenizer,
    GGUFTokenizerSpec,
)
from app.text.detokenize import IncrementalDetokenizer

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


def test_incremental_detokenizer_over_byte_fallback_characters() -> None:
    # Characters spelled by <0xNN> tokens, longer than the detokenizer's left context: a
    # window opening inside one decodes differently depending on what follows, which used
    # to emit U+FFFD garbage ("🎉本ß" came out as "🎉本��").
    tok = GGUFTokenizer(_spm_spec())
    byte_token = 3  # <0x00>, after <unk> <s> </s>
    for text in ("🎉本ß", "日本語🎉🎉 hello world"):
        ids = [byte_token + b for b in text.encode()]
        d = IncrementalDetokenizer(tok.decode)
        assert "".join(d.add(i) for i in ids) + d.flush() == text
