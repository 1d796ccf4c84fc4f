"""The `TextTokenizer` of a GGUF file, rebuilt from its metadata.

A GGUF carries its vocabulary, merges and token types as `tokenizer.ggml.*` metadata but no
`tokenizer.json`; `GGUFTokenizer` rebuilds the equivalent Hugging Face `tokenizers` pipeline
(the Rust one HF folders use) so encoding matches llama.cpp and the original checkpoint.
No MLX here: the serving layer tokenizes outside the engine thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from app.text.chat_template import render_chat_template
from app.text.special_tokens import end_of_turn_ids

logger = logging.getLogger(__name__)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# GPT-2's split, which `ByteLevel(use_regex=True)` applies itself.
GPT2_SPLIT = None
# Llama 3 (and tiktoken-style) split: digits in runs of up to three, case-insensitive clitics.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2: like Llama 3 but every digit on its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> (split each digit first, extra split regex or None for GPT-2's).
# Mirrors llama.cpp's llama-vocab.cpp; SmolLM (like StarCoder) splits digits, then GPT-2.
PRE_TOKENIZERS: dict[str, tuple[bool, str | None]] = {
    "default": (False, GPT2_SPLIT),
    "gpt-2": (False, GPT2_SPLIT),
    "gpt2": (False, GPT2_SPLIT),
    "mpt": (False, GPT2_SPLIT),
    "olmo": (False, GPT2_SPLIT),
    "jais": (False, GPT2_SPLIT),
    "smollm": (True, GPT2_SPLIT),
    "starcoder": (True, GPT2_SPLIT),
    "refact": (True, GPT2_SPLIT),
    "command-r": (True, GPT2_SPLIT),
    "codeshell": (True, GPT2_SPLIT),
    "exaone": (True, GPT2_SPLIT),
    "llama-bpe": (False, LLAMA3_SPLIT),
    "llama3": (False, LLAMA3_SPLIT),
    "llama-v3": (False, LLAMA3_SPLIT),
    "falcon3": (False, LLAMA3_SPLIT),
    "smaug-bpe": (False, LLAMA3_SPLIT),
    "dbrx": (False, LLAMA3_SPLIT),
    "qwen2": (False, QWEN2_SPLIT),
    "deepseek-r1-qwen": (False, QWEN2_SPLIT),
    "stablelm2": (False, QWEN2_SPLIT),
}
SPM_SPACE = "\u2581"  # SentencePiece's visible space '▁'


def _plain(value: Any) -> Any:
    """GGUF metadata values as Python (mx.load gives 0-d/1-d arrays for numbers)."""
    return value.tolist() if hasattr(value, "tolist") else value


@dataclass(slots=True)
class GGUFTokenizerSpec:
    """The `tokenizer.*` keys of a GGUF, as plain Python."""

    model: str
    """tokenizer.ggml.model: 'gpt2' (byte-level BPE) or 'llama' (SentencePiece BPE)."""
    tokens: list[str]
    token_types: list[int]
    merges: list[str] | None = None
    scores: list[float] | None = None
    pre: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    eot_token_id: int | None = None
    eom_token_id: int | None = None
    unknown_token_id: int | None = None
    padding_token_id: int | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> GGUFTokenizerSpec:
        def get(key: str, default: Any = None) -> Any:
            value = metadata.get(f"tokenizer.{key}")
            return default if value is None else _plain(value)

        model = get("ggml.model")
        tokens = get("ggml.tokens")
        if model is None or tokens is None:
            raise ValueError("GGUF has no tokenizer (tokenizer.ggml.model / tokens missing)")
        types = get("ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
        return cls(
            model=str(model),
            tokens=list(tokens),
            token_types=[int(t) for t in types],
            merges=get("ggml.merges"),
            scores=get("ggml.scores"),
            pre=get("ggml.pre"),
            bos_token_id=get("ggml.bos_token_id"),
            eos_token_id=get("ggml.eos_token_id"),
            eot_token_id=get("ggml.eot_token_id"),
            eom_token_id=get("ggml.eom_token_id"),
            unknown_token_id=get("ggml.unknown_token_id"),
            padding_token_id=get("ggml.padding_token_id"),
            # llama.cpp adds BOS for SentencePiece vocabularies that do not say otherwise.
            add_bos_token=bool(get("ggml.add_bos_token", model == "llama")),
            add_eos_token=bool(get("ggml.add_eos_token", False)),
            add_space_prefix=bool(get("ggml.add_space_prefix", model == "llama")),
            chat_template=get("chat_template"),
        )

    def token(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < len(self.tokens):
            return None
        return self.tokens[token_id]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_model(spec: GGUFTokenizerSpec) -> models.BPE:
    if spec.merges is None:
        raise ValueError("byte-level BPE GGUF has no tokenizer.ggml.merges")
    vocab = {tok: i for i, tok in enumerate(spec.tokens)}
    merges: list[tuple[str, str]] = []
    for merge in spec.merges:
        left, right = merge.split(" ", 1)
        merges.append((left, right))
    return models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)


def _byte_level_pre_tokenizer(pre_name: str | None) -> pre.PreTokenizer:
    name = pre_name or "default"
    if name not in PRE_TOKENIZERS:
        # llama.cpp refuses unknown names; GPT-2's split is the closest common ground.
        logger.warning("unknown tokenizer.ggml.pre %r: using GPT-2's pre-tokenizer", name)
        name = "default"
    split_digits, regex = PRE_TOKENIZERS[name]
    steps: list[pre.PreTokenizer] = []
    if split_digits:
        steps.append(pre.Digits(individual_digits=True))
    if regex is None:
        steps.append(pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True))
    else:
        steps.append(pre.Split(Regex(regex), behavior="isolated"))
        steps.append(pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False))
    return steps[0] if len(steps) == 1 else pre.Sequence(steps)


def _spm_merges(spec: GGUFTokenizerSpec) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: best-scored merged piece first."""
    vocab = {tok: i for i, tok in enumerate(spec.tokens)}
    scores = spec.scores or [-float(i) for i in range(len(spec.tokens))]
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, tok_type in zip(spec.tokens, spec.token_types, strict=True):
        if tok_type not in (TOKEN_NORMAL, TOKEN_USER_DEFINED):
            continue
        score = scores[vocab[tok]]
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _build_spm(spec: GGUFTokenizerSpec) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(spec.tokens)}
    unk = spec.token(spec.unknown_token_id)
    model = models.BPE(
        vocab=vocab, merges=_spm_merges(spec), unk_token=unk, fuse_unk=True, byte_fallback=True
    )
    tok = Tokenizer(model)
    steps: list[normalizers.Normalizer] = []
    if spec.add_space_prefix:
        steps.append(normalizers.Prepend(SPM_SPACE))
    steps.append(normalizers.Replace(" ", SPM_SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    dec: list[decoders.Decoder] = [
        decoders.Replace(SPM_SPACE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if spec.add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _build_byte_level(spec: GGUFTokenizerSpec) -> Tokenizer:
    alphabet = set(_bytes_to_unicode().values())
    odd = [
        t
        for t, ty in zip(spec.tokens, spec.token_types, strict=True)
        if ty == TOKEN_NORMAL and not set(t) <= alphabet
    ]
    if odd:
        # Such a token can never be produced by byte-level BPE; harmless but worth knowing.
        logger.info("%d byte-level tokens are not spelled in the byte alphabet", len(odd))
    tok = Tokenizer(_byte_level_model(spec))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(spec.pre)
    tok.decoder = decoders.ByteLevel()
    return tok


def _post_processor(spec: GGUFTokenizerSpec) -> processors.PostProcessor | None:
    bos = spec.token(spec.bos_token_id) if spec.add_bos_token else None
    eos = spec.token(spec.eos_token_id) if spec.add_eos_token else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False) if spec.model == "gpt2" else None
    single = " ".join(p for p in (bos and f"{bos}:0", "$A:0", eos and f"{eos}:0") if p)
    pair = " ".join(p for p in (single, bos and f"{bos}:1", "$B:1", eos and f"{eos}:1") if p)
    special = [(t, spec.tokens.index(t)) for t in {bos, eos} if t is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def build_hf_tokenizer(spec: GGUFTokenizerSpec) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to the GGUF's (same ids as llama.cpp / HF)."""
    if spec.model == "gpt2":
        tok = _build_byte_level(spec)
    elif spec.model == "llama":
        tok = _build_spm(spec)
    else:
        raise ValueError(
            f"GGUF tokenizer model {spec.model!r} is not supported (supported: gpt2, llama)"
        )
    # Control tokens must match whole in text ("<|im_start|>" -> one id) and be skipped on
    # decode; user-defined ones match whole but are ordinary text.
    specials, user = [], []
    for t, ty in zip(spec.tokens, spec.token_types, strict=True):
        if ty == TOKEN_CONTROL:
            specials.append(AddedToken(t, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED:
            user.append(AddedToken(t, special=False, normalized=False))
    tok.add_special_tokens(specials)
    tok.add_tokens(user)
    post = _post_processor(spec)
    if post is not None:
        tok.post_processor = post
    return tok


@dataclass(slots=True)
class GGUFTokenizer:
    """`TextTokenizer` rebuilt from a GGUF's metadata."""

    spec: GGUFTokenizerSpec
    hf: Tokenizer = field(init=False)
    """The underlying `tokenizers.Tokenizer` (e.g. for `tokenizers.decoders.DecodeStream`)."""
    _eos_ids: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.hf = build_hf_tokenizer(self.spec)
        eos = {
            i
            for i in (self.spec.eos_token_id, self.spec.eot_token_id, self.spec.eom_token_id)
            if i is not None
        }
        control = {i for i, ty in enumerate(self.spec.token_types) if ty == TOKEN_CONTROL}
        self._eos_ids = end_of_turn_ids(eos, self.hf.get_vocab(with_added_tokens=True), control)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> GGUFTokenizer:
        return cls(GGUFTokenizerSpec.from_metadata(metadata))

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self._eos_ids)

    @property
    def bos_token_id(self) -> int | None:
        return self.spec.bos_token_id

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size(with_added_tokens=True))

    @property
    def chat_template(self) -> str | None:
        return self.spec.chat_template

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids, skip_special_tokens=True))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None, **variables: Any,
    ) -> str:
        return render_chat_template(
            self.spec.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.spec.token(self.spec.bos_token_id),
            eos_token=self.spec.token(self.spec.eos_token_id),
            tools=tools,
            **variables,
        )

    def tokenizer_json(self) -> str | None:
        """The `tokenizer.json` text of this tokenizer (grammars, a converted HF folder)."""
        return str(self.hf.to_str())
