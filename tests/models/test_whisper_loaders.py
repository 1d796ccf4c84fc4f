"""CTranslate2 reader on synthetic files, and one tiny random Whisper saved three ways
(CTranslate2, transformers, OpenAI/mlx-community naming) loading to the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlx.utils import tree_flatten

from app.models.whisper.ct2 import CT2FormatError, parse_ct2, read_ct2, whisper_weights
from tests.ct2_writer import write_ct2
from tests.speech_fixtures import tiny_en_path

D, HEADS, LAYERS, N_MELS, AUDIO_CTX, TEXT_CTX = 8, 2, 2, 80, 1500, 448


def test_ct2_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    variables: dict[str, np.ndarray] = {
        "a/weight": rng.standard_normal((3, 4)).astype(np.float16),
        "a/bias": rng.standard_normal(3).astype(np.float32),
        "q/weight": rng.integers(-127, 127, (2, 5)).astype(np.int8),
        "heads": np.array(6, dtype=np.int16),
        "big": rng.standard_normal((2, 3, 4)).astype(np.float32),
    }
    write_ct2(tmp_path / "model.bin", variables, aliases={"b/weight": "a/weight"})
    model = read_ct2(tmp_path)
    assert model.spec == "WhisperSpec" and model.binary_version == 6
    for name, value in variables.items():
        assert model.get(name).dtype == value.dtype
        np.testing.assert_array_equal(model.get(name), value)
    np.testing.assert_array_equal(model.get("b/weight"), variables["a/weight"])
    assert model.scalar("heads") == 6


def test_ct2_rejects_bad_files(tmp_path: Path) -> None:
    write_ct2(tmp_path / "model.bin", {"x": np.ones((4, 4), np.float32)})
    data = (tmp_path / "model.bin").read_bytes()
    with pytest.raises(CT2FormatError, match="truncated"):
        parse_ct2(data[:-10])
    with pytest.raises(CT2FormatError, match="version"):
        parse_ct2((99).to_bytes(4, "little") + data[4:])
    with pytest.raises(CT2FormatError, match="not Whisper"):
        whisper_weights(parse_ct2(_with_spec(data, "TransformerSpec")))


def _with_spec(data: bytes, spec: str) -> bytes:
    old_len = int.from_bytes(data[4:6], "little")
    raw = spec.encode() + b"\0"
    return data[:4] + len(raw).to_bytes(2, "little") + raw + data[6 + old_len :]


def test_ct2_int8_weights_are_dequantized() -> None:
    from app.models.whisper.ct2 import CT2Model

    q = np.array([[10, -20], [30, 40]], np.int8)
    scale = np.array([10.0, 20.0], np.float32)
    model = CT2Model("WhisperSpec", 3, 6)
    model.variables = {
        "decoder/layer_0/ffn/linear_0/weight": q,
        "decoder/layer_0/ffn/linear_0/weight_scale": scale,
        "encoder/conv1/weight": np.zeros((4, 2, 3), np.float32),
        "encoder/position_encodings/encodings": np.zeros((5, 4), np.float32),
        "encoder/num_heads": np.array(1, np.int16),
        "decoder/num_heads": np.array(1, np.int16),
        "decoder/embeddings/weight": np.zeros((7, 4), np.float32),
        "decoder/position_encodings/encodings": np.zeros((6, 4), np.float32),
    }
    dims, weights = whisper_weights(model)
    expected = np.array([[1, -2], [1.5, 2]], np.float32)
    np.testing.assert_allclose(weights["decoder.blocks.0.mlp.fc1.weight"], expected)
    assert weights["encoder.conv1.weight"].shape == (4, 3, 2)  # [out, k, in]
    assert dims["n_mels"] == 2 and dims["n_vocab"] == 7 and dims["n_text_ctx"] == 6


# -- one random model, three file layouts -------------------------------------------------
def _random_model(n_vocab: int) -> dict[str, np.ndarray]:
    """Weights under our module names; fused k biases are zero (HF/OpenAI have none)."""
    rng = np.random.default_rng(1)

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    w = {
        "encoder.conv1.weight": r(D, 3, N_MELS),
        "encoder.conv1.bias": r(D),
        "encoder.conv2.weight": r(D, 3, D),
        "encoder.conv2.bias": r(D),
        "encoder.positions": r(AUDIO_CTX, D),
        "encoder.ln_post.weight": 1 + r(D),
        "encoder.ln_post.bias": r(D),
        "decoder.token_embedding.weight": r(n_vocab, D),
        "decoder.positions": r(TEXT_CTX, D),
        "decoder.ln.weight": 1 + r(D),
        "decoder.ln.bias": r(D),
    }
    for side in ("encoder", "decoder"):
        for i in range(LAYERS):
            p = f"{side}.blocks.{i}"
            parts = ["attn_ln", "mlp_ln"] + (["cross_ln"] if side == "decoder" else [])
            for ln in parts:
                w[f"{p}.{ln}.weight"], w[f"{p}.{ln}.bias"] = 1 + r(D), r(D)
            qkv_bias = r(3 * D)
            qkv_bias[D : 2 * D] = 0
            w |= {f"{p}.attn.qkv.weight": r(3 * D, D), f"{p}.attn.qkv.bias": qkv_bias}
            w |= {f"{p}.attn.out.weight": r(D, D), f"{p}.attn.out.bias": r(D)}
            w |= {f"{p}.mlp.fc1.weight": r(4 * D, D), f"{p}.mlp.fc1.bias": r(4 * D)}
            w |= {f"{p}.mlp.fc2.weight": r(D, 4 * D), f"{p}.mlp.fc2.bias": r(D)}
            if side == "decoder":
                kv_bias = r(2 * D)
                kv_bias[:D] = 0
                w |= {f"{p}.cross.q.weight": r(D, D), f"{p}.cross.q.bias": r(D)}
                w |= {f"{p}.cross.kv.weight": r(2 * D, D), f"{p}.cross.kv.bias": kv_bias}
                w |= {f"{p}.cross.out.weight": r(D, D), f"{p}.cross.out.bias": r(D)}
    return w


def _save_ct2(w: dict[str, np.ndarray], folder: Path) -> None:
    out: dict[str, np.ndarray] = {}
    leaf = {"weight": "gamma", "bias": "beta"}
    parts = {
        "attn_ln": ("self_attention/layer_norm", True),
        "attn.qkv": ("self_attention/linear_0", False),
        "attn.out": ("self_attention/linear_1", False),
        "cross_ln": ("attention/layer_norm", True),
        "cross.q": ("attention/linear_0", False),
        "cross.kv": ("attention/linear_1", False),
        "cross.out": ("attention/linear_2", False),
        "mlp_ln": ("ffn/layer_norm", True),
        "mlp.fc1": ("ffn/linear_0", False),
        "mlp.fc2": ("ffn/linear_1", False),
    }
    for name, value in w.items():
        if ".blocks." in name:
            side, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            target, is_ln = parts[module]
            out[f"{side}/layer_{i}/{target}/{leaf[kind] if is_ln else kind}"] = value
    for side in ("encoder", "decoder"):
        out[f"{side}/num_heads"] = np.array(HEADS, np.int16)
    out["encoder/conv1/weight"] = w["encoder.conv1.weight"].transpose(0, 2, 1).astype(np.float16)
    out["encoder/conv1/bias"] = w["encoder.conv1.bias"]
    out["encoder/conv2/weight"] = w["encoder.conv2.weight"].transpose(0, 2, 1)
    out["encoder/conv2/bias"] = w["encoder.conv2.bias"]
    out["encoder/position_encodings/encodings"] = w["encoder.positions"]
    out["encoder/layer_norm/gamma"] = w["encoder.ln_post.weight"]
    out["encoder/layer_norm/beta"] = w["encoder.ln_post.bias"]
    out["decoder/embeddings/weight"] = w["decoder.token_embedding.weight"]
    out["decoder/position_encodings/encodings"] = w["decoder.positions"]
    out["decoder/layer_norm/gamma"] = w["decoder.ln.weight"]
    out["decoder/layer_norm/beta"] = w["decoder.ln.bias"]
    folder.mkdir()
    # float16 conv1 exercises the dtype path; compare with the rounded weights
    w["encoder.conv1.weight"] = w["encoder.conv1.weight"].astype(np.float16).astype(np.float32)
    write_ct2(folder / "model.bin", out, aliases={"decoder/projection/weight":
                                                  "decoder/embeddings/weight"})  # fmt: skip


def _split_attention(w: dict[str, np.ndarray], p: str) -> dict[str, np.ndarray]:
    q, k, v = np.split(w[f"{p}.attn.qkv.weight"], 3)
    qb, _, vb = np.split(w[f"{p}.attn.qkv.bias"], 3)
    out = {"self.q.w": q, "self.q.b": qb, "self.k.w": k, "self.v.w": v, "self.v.b": vb}
    out |= {"self.o.w": w[f"{p}.attn.out.weight"], "self.o.b": w[f"{p}.attn.out.bias"]}
    if f"{p}.cross.q.weight" in w:
        ck, cv = np.split(w[f"{p}.cross.kv.weight"], 2)
        out |= {"cross.q.w": w[f"{p}.cross.q.weight"], "cross.q.b": w[f"{p}.cross.q.bias"]}
        out |= {"cross.k.w": ck, "cross.v.w": cv, "cross.v.b": w[f"{p}.cross.kv.bias"][D:]}
        out |= {"cross.o.w": w[f"{p}.cross.out.weight"], "cross.o.b": w[f"{p}.cross.out.bias"]}
    return out


def _layer_tensors(w: dict[str, np.ndarray], p: str, to: str, mods: dict[str, str],
                   names: dict[str, str], renames: tuple[tuple[str, str], ...],
                   ) -> dict[str, np.ndarray]:
    """One block's tensors under another format's names: block `p` of ours -> `to`."""
    out = {}
    for key, value in _split_attention(w, p).items():
        mod, role, kind = key.split(".")
        out[f"{to}.{mods[mod]}.{names[role]}.{'weight' if kind == 'w' else 'bias'}"] = value
    for ours, theirs in renames:
        for kind in ("weight", "bias"):
            if f"{p}.{ours}.{kind}" in w:
                out[f"{to}.{theirs}.{kind}"] = w[f"{p}.{ours}.{kind}"]
    return out


def _save_transformers(w: dict[str, np.ndarray], folder: Path, n_vocab: int) -> None:
    from safetensors.numpy import save_file

    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
    mods = {"self": "self_attn", "cross": "encoder_attn"}
    out = {
        "model.encoder.conv1.weight": w["encoder.conv1.weight"].transpose(0, 2, 1),
        "model.encoder.conv1.bias": w["encoder.conv1.bias"],
        "model.encoder.conv2.weight": w["encoder.conv2.weight"].transpose(0, 2, 1),
        "model.encoder.conv2.bias": w["encoder.conv2.bias"],
        "model.encoder.embed_positions.weight": w["encoder.positions"],
        "model.encoder.layer_norm.weight": w["encoder.ln_post.weight"],
        "model.encoder.layer_norm.bias": w["encoder.ln_post.bias"],
        "model.decoder.embed_tokens.weight": w["decoder.token_embedding.weight"],
        "model.decoder.embed_positions.weight": w["decoder.positions"],
        "model.decoder.layer_norm.weight": w["decoder.ln.weight"],
        "model.decoder.layer_norm.bias": w["decoder.ln.bias"],
        "proj_out.weight": w["decoder.token_embedding.weight"],
    }
    renames = (("attn_ln", "self_attn_layer_norm"), ("mlp_ln", "final_layer_norm"),
               ("cross_ln", "encoder_attn_layer_norm"), ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2"))
    for side in ("encoder", "decoder"):
        for i in range(LAYERS):
            out |= _layer_tensors(w, f"{side}.blocks.{i}", f"model.{side}.layers.{i}",
                                  mods, names, renames)
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
              str(folder / "model.safetensors"))  # fmt: skip
    config = {
        "d_model": D, "encoder_layers": LAYERS, "decoder_layers": LAYERS,
        "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS,
        "num_mel_bins": N_MELS, "vocab_size": n_vocab, "max_source_positions": AUDIO_CTX,
        "max_target_positions": TEXT_CTX,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))


def _save_openai(w: dict[str, np.ndarray], folder: Path, n_vocab: int) -> None:
    from safetensors.numpy import save_file

    names = {"q": "query", "k": "key", "v": "value", "o": "out"}
    mods = {"self": "attn", "cross": "cross_attn"}
    out = {
        "encoder.conv1.weight": w["encoder.conv1.weight"],  # MLX layout, as mlx-community
        "encoder.conv1.bias": w["encoder.conv1.bias"],
        "encoder.conv2.weight": w["encoder.conv2.weight"],
        "encoder.conv2.bias": w["encoder.conv2.bias"],
        "encoder.ln_post.weight": w["encoder.ln_post.weight"],
        "encoder.ln_post.bias": w["encoder.ln_post.bias"],
        "decoder.token_embedding.weight": w["decoder.token_embedding.weight"],
        "decoder.positional_embedding": w["decoder.positions"],
        "decoder.ln.weight": w["decoder.ln.weight"],
        "decoder.ln.bias": w["decoder.ln.bias"],
    }
    renames = (("attn_ln", "attn_ln"), ("mlp_ln", "mlp_ln"), ("cross_ln", "cross_attn_ln"),
               ("mlp.fc1", "mlp1"), ("mlp.fc2", "mlp2"))
    for side in ("encoder", "decoder"):
        for i in range(LAYERS):
            p = f"{side}.blocks.{i}"
            out |= _layer_tensors(w, p, p, mods, names, renames)
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
              str(folder / "weights.safetensors"))  # fmt: skip
    dims = {
        "n_mels": N_MELS, "n_audio_ctx": AUDIO_CTX, "n_audio_state": D, "n_audio_head": HEADS,
        "n_audio_layer": LAYERS, "n_vocab": n_vocab, "n_text_ctx": TEXT_CTX, "n_text_state": D,
        "n_text_head": HEADS, "n_text_layer": LAYERS,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", **dims}))


@pytest.mark.skipif(tiny_en_path() is None, reason="needs tiny.en's tokenizer.json")
def test_three_layouts_load_to_the_same_model(tmp_path: Path) -> None:
    import mlx.core as mx

    from app.models.whisper import load_whisper

    n_vocab = 51864  # tiny.en's vocabulary, so its tokenizer.json fits
    weights = _random_model(n_vocab)
    _save_ct2(weights, tmp_path / "ct2")
    _save_transformers(weights, tmp_path / "hf", n_vocab)
    # the encoder's sinusoids are computed, not stored, in OpenAI/mlx-community files
    from app.models.whisper.model import sinusoids

    weights["encoder.positions"] = np.array(sinusoids(AUDIO_CTX, D))
    _save_openai(weights, tmp_path / "openai", n_vocab)
    for name in ("ct2", "hf", "openai"):
        shutil.copy(tiny_en_path() / "tokenizer.json", tmp_path / name)  # type: ignore[operator]

    mel = mx.array(np.random.default_rng(2).standard_normal((1, N_MELS, 200)).astype(np.float32))
    tokens = mx.array([[50257, 50363, 440, 2068, 7586]])
    outputs = {}
    for name in ("ct2", "hf", "openai"):
        bundle = load_whisper(tmp_path / name)
        assert bundle.format == ("ct2" if name == "ct2" else "hf")
        assert not bundle.is_multilingual and bundle.dtype == "float32"
        audio = bundle.model.encoder(mel)
        kv = [blk.cross.project_kv(audio) for blk in bundle.model.decoder.blocks]
        logits, _ = bundle.model.decoder(tokens, kv, None, positions=[0, 2, 4])
        outputs[name] = (np.array(audio), np.array(logits))
        assert bundle.fingerprint and len(bundle.suppress_tokens) > 80
    ct2_audio, ct2_logits = outputs["ct2"]
    hf_audio, hf_logits = outputs["hf"]
    np.testing.assert_allclose(hf_audio, ct2_audio, atol=1e-4)
    np.testing.assert_allclose(hf_logits, ct2_logits, atol=1e-4)
    # only the encoder positions differ (sinusoids), so compare the decoder on CT2's audio
    oa_bundle = load_whisper(tmp_path / "openai")
    kv = [blk.cross.project_kv(mx.array(ct2_audio)) for blk in oa_bundle.model.decoder.blocks]
    oa_logits, _ = oa_bundle.model.decoder(tokens, kv, None, positions=[0, 2, 4])
    np.testing.assert_allclose(np.array(oa_logits), ct2_logits, atol=1e-4)


def test_missing_folder_raises(tmp_path: Path) -> None:
    from app.models.whisper import load_whisper

    with pytest.raises(FileNotFoundError):
        load_whisper(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_whisper(tmp_path / "empty")


@pytest.mark.skipif(tiny_en_path() is None, reason="needs tiny.en")
def test_model_bin_split_across_folders_loads_whole(tmp_path: Path) -> None:
    """Whisper base ships its model.bin as part1 + part2 in two packages (models.yaml
    `parts`); the pieces are read back as one file."""
    from app.models.registry import ModelSource, ModelSpec, resolve_parts, source_available
    from app.models.whisper import load_whisper

    src = tiny_en_path()
    assert src is not None
    first, second = tmp_path / "part1", tmp_path / "part2"
    shutil.copytree(src, first)
    second.mkdir()
    data = (first / "model.bin").read_bytes()
    (first / "model.bin").unlink()
    (first / "model.bin.part1").write_bytes(data[: len(data) // 3])
    (second / "model.bin.part2").write_bytes(data[len(data) // 3 :])
    spec = ModelSpec("split", "transcription", ModelSource(
        path=str(first), parts=[str(second / "model.bin.part2")]))
    assert source_available(spec)
    split = load_whisper(first, parts=resolve_parts(spec))
    whole = load_whisper(src)
    w_split = dict(tree_flatten(split.model.parameters()))
    for name, value in tree_flatten(whole.model.parameters()):
        np.testing.assert_array_equal(np.array(w_split[name]), np.array(value), err_msg=name)
    missing = ModelSpec("split", "transcription", ModelSource(
        path=str(first), parts=[str(tmp_path / "nowhere" / "model.bin.part2")]))
    assert not source_available(missing)
    with pytest.raises(CT2FormatError):  # the first piece alone is a truncated file
        load_whisper(first)
