"""Whisper's byte-level BPE plus its control tokens (sot, language, task, timestamps).

Control-token ids are looked up by name where the tokenizer file lists them and
otherwise derived from the fixed layout after <|endoftext|> (CTranslate2's tokenizer.json
stops at <|notimestamps|>; the 1501 timestamp tokens follow it in every Whisper vocab).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from app.audio.languages import LANGUAGE_CODES, NO_SPACE_LANGUAGES

logger = logging.getLogger(__name__)

TIME_PRECISION = 0.02  # seconds per timestamp token step
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
# Symbols Whisper should not emit as speech (suppress_tokens=-1), when the model folder
# does not list them itself.
_NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    [
        "<<",
        ">>",
        "<<<",
        ">>>",
        "--",
        "---",
        "-(",
        "-[",
        "('",
        '("',
        "((",
        "))",
        "(((",
        ")))",
        "[[",
        "]]",
        "{{",
        "}}",
        "♪♪",
        "♪♪♪",
    ]
)
_MUSIC_SYMBOLS = set("♩♪♫♬♭♮♯")


@dataclass(slots=True, frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    language_ids: tuple[int, ...]


class WhisperTokenizer:
    """Text <-> ids for one Whisper vocabulary, with the decoder's control sequences."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int) -> None:
        self._tok = tokenizer
        self.n_vocab = n_vocab
        self.special = _special_tokens(tokenizer, n_vocab)
        n_langs = len(self.special.language_ids)
        self.languages: tuple[str, ...] = LANGUAGE_CODES[:n_langs]

    # -- control tokens -------------------------------------------------------------
    @property
    def eot(self) -> int:
        return self.special.eot

    @property
    def timestamp_begin(self) -> int:
        return self.special.timestamp_begin

    @property
    def is_multilingual(self) -> bool:
        # English-only vocabularies still list language tokens but the model never saw them
        return self.n_vocab >= 51865

    def language_token(self, code: str) -> int:
        try:
            return self.special.language_ids[self.languages.index(code)]
        except ValueError:
            raise ValueError(f"language {code!r} is not in this model's vocabulary") from None

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>]: English-only models take sot alone."""
        seq = [self.special.sot]
        if self.is_multilingual:
            seq.append(self.language_token(language or "en"))
            seq.append(self.special.translate if task == "translate" else self.special.transcribe)
        return seq

    # -- text -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; control and timestamp tokens are dropped."""
        return str(self._tok.decode([i for i in ids if i < self.special.eot]))

    def non_speech_tokens(self) -> list[int]:
        """Tokens of symbols and music notes that are never speech (suppress_tokens=-1)."""
        out = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in _NON_SPEECH_SYMBOLS + sorted(_MUSIC_SYMBOLS):
            for variant in (symbol, " " + symbol):
                ids = self.encode(variant)
                if len(ids) == 1 or (ids and symbol in _MUSIC_SYMBOLS):
                    out.add(ids[0])
        return sorted(out)

    def split_words(self, ids: list[int], language: str) -> list[tuple[str, list[int]]]:
        """Group text tokens into words: on leading spaces/punctuation, or per character
        group for scripts written without spaces."""
        pieces = self._split_unicode(ids)
        if language in NO_SPACE_LANGUAGES:
            return pieces
        words: list[tuple[str, list[int]]] = []
        for text, toks in pieces:
            starts_word = text.startswith(" ") or text.strip() in _PUNCTUATION or not words
            if starts_word:
                words.append((text, list(toks)))
            else:
                prev_text, prev_toks = words[-1]
                words[-1] = (prev_text + text, prev_toks + toks)
        return words

    def _split_unicode(self, ids: list[int]) -> list[tuple[str, list[int]]]:
        # a token can end inside a multi-byte character: wait until the text decodes whole
        out: list[tuple[str, list[int]]] = []
        pending: list[int] = []
        for token in ids:
            pending.append(token)
            text = self._tok.decode(pending)
            if "\ufffd" not in text:
                out.append((text, pending))
                pending = []
        if pending:
            out.append((self._tok.decode(pending), pending))
        return out


_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _special_tokens(tok: Tokenizer, n_vocab: int) -> SpecialTokens:
    def find(*names: str) -> int | None:
        for name in names:
            token_id = tok.token_to_id(name)
            if token_id is not None:
                return int(token_id)
        return None

    eot = find("<|endoftext|>")
    if eot is None:
        raise ValueError("tokenizer has no <|endoftext|>: not a Whisper tokenizer")
    # Fixed layout: eot, sot, N languages, translate, transcribe, sot_lm, sot_prev,
    # no_speech, no_timestamps, then timestamps; N = what is left of the vocabulary.
    n_langs = n_vocab - N_TIMESTAMPS - eot - 8
    sot = find("<|startoftranscript|>") or eot + 1
    translate = find("<|translate|>") or sot + 1 + n_langs
    lang_ids = tuple(range(sot + 1, translate))
    no_timestamps = find("<|notimestamps|>") or translate + 5
    return SpecialTokens(
        eot=eot,
        sot=sot,
        translate=translate,
        transcribe=find("<|transcribe|>") or translate + 1,
        sot_lm=find("<|startoflm|>") or translate + 2,
        sot_prev=find("<|startofprev|>") or translate + 3,
        no_speech=find("<|nospeech|>", "<|nocaptions|>") or translate + 4,
        no_timestamps=no_timestamps,
        timestamp_begin=no_timestamps + 1,
        language_ids=lang_ids,
    )


def load_tokenizer(folder: str | Path, n_vocab: int) -> WhisperTokenizer:
    """tokenizer.json, or GPT-2 style vocab.json + merges.txt (+ added_tokens.json)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        added = folder / "added_tokens.json"
        if added.exists():
            from tokenizers import AddedToken

            table = json.loads(added.read_text())
            names = sorted(table, key=table.get)
            tok.add_special_tokens([AddedToken(n, special=True) for n in names])
    else:
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json (or vocab.json + merges.txt) for this Whisper model"
        )
    return WhisperTokenizer(tok, n_vocab)
