"""Sentence vectors from an encoder's hidden states (numpy: the batch is small)."""

from __future__ import annotations

from typing import Literal

import numpy as np

Pooling = Literal["mean", "cls"]


def pool(hidden: np.ndarray, lengths: np.ndarray, how: Pooling, normalize: bool) -> np.ndarray:
    """[B, D] from hidden [B, L, D] of right-padded rows: the mean over each row's tokens
    or its first ([CLS]) token, L2-normalized when the model was trained so."""
    if how == "cls":
        out = hidden[:, 0, :].astype(np.float32)
    else:
        valid = np.arange(hidden.shape[1])[None, :] < lengths[:, None]
        out = np.einsum("bld,bl->bd", hidden.astype(np.float32), valid.astype(np.float32))
        out /= lengths[:, None].astype(np.float32)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), np.float32(1e-12))
    return out
