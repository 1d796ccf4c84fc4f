"""The numpy decoder (CPU decode steps, app/accel/cpu/whisper_decoder.py) against the MLX
decoder it mirrors."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from app.accel.cpu.whisper_decoder import KV_GROWTH, NumpyTextDecoder, NumpyWindowSteps
from app.accel.cpu.whisper_ops import Projection
from app.audio.decode import decode_audio
from app.audio.mel import log_mel_spectrogram
from app.models.whisper.decoding import DecodingOptions, WindowDecoder
from app.models.whisper.mlx_steps import MlxWindowSteps
from tests.speech_fixtures import LIBRIVOX, load_whisper_as_served, pad_or_trim, tiny_en_path

pytestmark = [
    pytest.mark.skipif(tiny_en_path() is None or not LIBRIVOX.exists(),
                       reason="needs tiny.en and LibriVox clips"),
    pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the numpy path is CPU-only"),
]


@pytest.fixture(scope="module")
def bundle() -> Any:
    from app.models.whisper import load_whisper

    bundle = load_whisper(tiny_en_path())  # type: ignore[arg-type]
    bundle.model.store_decoder_input_major()  # the layout the CPU path copies from
    return bundle


@pytest.fixture(scope="module")
def numpy_decoder(bundle: Any) -> NumpyTextDecoder:
    return NumpyTextDecoder(bundle.model, Projection(bundle.model.decoder.token_embedding.weight))


@pytest.fixture(scope="module")
def cross_kv(bundle: Any) -> list[tuple[mx.array, mx.array]]:
    clip = sorted(LIBRIVOX.glob("*.wav"))[0]
    mel = pad_or_trim(log_mel_spectrogram(decode_audio(clip.read_bytes()), bundle.n_mels))
    kv = bundle.model.encode(mx.array(mel)[None])
    mx.eval(kv)
    return kv


def _mlx_logits(bundle: Any, tokens: list[list[int]], kv: Any, cache: Any,
                positions: list[int] | None = None) -> tuple[np.ndarray, Any]:
    dec = bundle.model.decoder
    hidden, cache = dec.hidden(mx.array(tokens), kv, cache, positions)
    logits = dec.logits(hidden)
    mx.eval(logits, cache)
    return np.array(logits), cache


def test_steps_match_the_mlx_decoder(bundle: Any, numpy_decoder: NumpyTextDecoder,
                                     cross_kv: Any) -> None:
    cpu = numpy_decoder
    cross = cpu.cross(cross_kv)
    assert cross is not None
    first = [*bundle.tokenizer.sot_sequence("en", "transcribe"), 440, 3290]
    cache = cpu.empty_cache(1)
    got = cpu.logits(np.array([first]), cross, cache, [0, len(first) - 1])
    want, mlx_cache = _mlx_logits(bundle, [first], cross_kv, None, [0, len(first) - 1])
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    # three beams from the one row, then reordered: buffers are copied, never shared
    cache = cache.select([0, 0, 0])
    mlx_cache = [(mx.repeat(k, 3, axis=0), mx.repeat(v, 3, axis=0)) for k, v in mlx_cache]
    for step, order in enumerate([[0, 1, 2], [2, 0, 0], [1, 2, 0]]):
        cache = cache.select(order)
        index = mx.array(order)
        mlx_cache = [(k[index], v[index]) for k, v in mlx_cache]
        tokens = [[262 + step], [290 + step], [318 + step]]
        got = cpu.logits(np.array(tokens), cross, cache)
        want, mlx_cache = _mlx_logits(bundle, tokens, cross_kv, mlx_cache)
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
        assert (got.argmax(-1) == want.argmax(-1)).all()
    assert cache.length == len(first) + 3


def test_buffers_grow_past_their_first_capacity(bundle: Any, numpy_decoder: NumpyTextDecoder,
                                                cross_kv: Any) -> None:
    cpu = numpy_decoder
    cross = cpu.cross(cross_kv)
    assert cross is not None
    tokens = [50257] + [262 + i % 50 for i in range(KV_GROWTH + 5)]
    cache = cpu.empty_cache(1)
    cpu.logits(np.array([tokens[:KV_GROWTH - 1]]), cross, cache)
    for tok in tokens[KV_GROWTH - 1 :]:
        got = cpu.logits(np.array([[tok]]), cross, cache)
    want, _ = _mlx_logits(bundle, [tokens], cross_kv, None)
    assert cache.keys[0].shape[2] > KV_GROWTH
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)


def test_beam_search_tokens_equal_the_mlx_path(bundle: Any, numpy_decoder: NumpyTextDecoder,
                                               cross_kv: Any) -> None:
    tok = bundle.tokenizer
    decoders = []
    for use_numpy in (True, False):
        d = WindowDecoder(bundle.model, tok, cross_kv, tok.sot_sequence("en", "transcribe"),
                          bundle.suppress_tokens, bundle.begin_suppress_tokens)
        assert isinstance(d.steps, MlxWindowSteps)  # plain MLX ops: nothing injected
        if use_numpy:
            steps = numpy_decoder.window_steps(bundle.model, cross_kv)
            assert steps is not None
            d.steps = steps
        decoders.append(d)
    results = [d.decode(DecodingOptions(beam_size=5)) for d in decoders]
    assert results[0].tokens == results[1].tokens
    assert results[0].text.strip()
    assert abs(results[0].sum_logprob - results[1].sum_logprob) < 1e-2


def test_served_model_decodes_through_numpy_steps(cross_kv: Any) -> None:
    served = load_whisper_as_served()
    tok = served.tokenizer
    d = WindowDecoder(served.model, tok, cross_kv, tok.sot_sequence("en", "transcribe"),
                      served.suppress_tokens, served.begin_suppress_tokens)
    assert isinstance(d.steps, NumpyWindowSteps)
    assert served.model.ops.project is not None
