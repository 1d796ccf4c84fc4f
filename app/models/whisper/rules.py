"""Whisper's token suppression and timestamp rules, applied to a step's logits in numpy."""

from __future__ import annotations

import numpy as np

from app.models.whisper.logprobs import NEG_INF, log_softmax, logsumexp
from app.models.whisper.tokenizer import TIME_PRECISION, WhisperTokenizer

MAX_INITIAL_TIMESTAMP = 1.0  # seconds: the first timestamp may not start later than this


class LogitRules:
    """Suppression and timestamp rules of Whisper's decoder, applied in place per row."""

    def __init__(
        self,
        tokenizer: WhisperTokenizer,
        n_vocab: int,
        suppress_tokens: list[int],
        begin_suppress_tokens: list[int],
        *,
        timestamps: bool = True,
        suppress_blank: bool = True,
        max_initial_timestamp: float | None = MAX_INITIAL_TIMESTAMP,
    ) -> None:
        s = tokenizer.special
        self.eot = s.eot
        self.tb = s.timestamp_begin
        self.no_timestamps = s.no_timestamps
        self.timestamps = timestamps
        self.suppress = np.array(sorted(set(suppress_tokens)), dtype=np.int64)
        self.begin = np.array(begin_suppress_tokens if suppress_blank else [], np.int64)
        self.max_initial = (
            None
            if max_initial_timestamp is None
            else self.tb + round(max_initial_timestamp / TIME_PRECISION)
        )
        self.n_vocab = n_vocab

    def apply(self, logits: np.ndarray, seqs: list[list[int]]) -> np.ndarray:
        """Mask `logits` [B, V] in place given each row's tokens sampled so far in this
        window; returns the rows' log-probabilities after masking."""
        tb = self.tb
        for i, seq in enumerate(seqs):
            if not seq and self.begin.size:
                logits[i, self.begin] = NEG_INF
        logits[:, self.suppress] = NEG_INF
        if not self.timestamps:
            logits[:, tb:] = NEG_INF
            return log_softmax(logits)
        logits[:, self.no_timestamps] = NEG_INF
        for i, seq in enumerate(seqs):
            self._timestamp_rules(logits[i], seq)
        logprobs = log_softmax(logits)
        # when timestamps together outweigh every single text token, force a timestamp
        ts_mass = logsumexp(logprobs[:, tb:])
        force = ts_mass > logprobs[:, :tb].max(axis=-1)
        if force.any():
            logits[force, :tb] = NEG_INF
            logprobs[force] = log_softmax(logits[force])
        return logprobs

    def _timestamp_rules(self, row: np.ndarray, seq: list[int]) -> None:
        tb = self.tb
        last_ts = len(seq) >= 1 and seq[-1] >= tb
        penultimate_ts = len(seq) < 2 or seq[-2] >= tb
        if last_ts:
            # timestamps come in pairs (end, next start), except right before eot
            if penultimate_ts:
                row[tb:] = NEG_INF
            else:
                row[: self.eot] = NEG_INF
        last_time = next((t for t in reversed(seq) if t >= tb), None)
        if last_time is not None:
            # time never goes back; a closing timestamp may equal the opening one
            floor = last_time if (last_ts and not penultimate_ts) else last_time + 1
            row[tb:floor] = NEG_INF
        if not seq:
            row[:tb] = NEG_INF  # a window opens with a timestamp
            if self.max_initial is not None:
                row[self.max_initial + 1 :] = NEG_INF
