"""Tiny random-weight models: a Llama in Hugging Face layout, others in memory.

config.json + model.safetensors + tokenizer.json (byte-level BPE trained on a few
sentences) + tokenizer_config.json with a ChatML template: the same files a real
mlx-community folder has, so the real HF loader path is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama, qwen2, qwen3
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Hello, world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 384
INIT_STD = 0.3  # large enough that greedy logits are well separated (no near-ties)


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build_tiny_llama(out: Path, seed: int = 0, layers: int = 2) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-5, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rope_theta": 10000.0, "tie_word_embeddings": False,
        "bos_token_id": None, "eos_token_id": tok.token_to_id("<|im_end|>"),
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "model_max_length": 2048,
    }, indent=1))
    args = llama.ModelArgs.from_dict(config)
    model = llama.Model(args)
    mx.random.seed(seed)
    weights = {name: mx.random.normal(p.shape) * INIT_STD if p.ndim > 1 else mx.ones(p.shape)
               for name, p in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out


def random_model(kind: str) -> Any:
    """A random float32 model built in memory: qwen2 (q/k/v biases, tied embeddings),
    qwen3 (RMSNorms of q and k per head) or llama3 (Llama-3 RoPE scaling)."""
    shape = dict(hidden_size=64, num_hidden_layers=3, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                 vocab_size=320)
    if kind == "qwen2":
        model = qwen2.Model(qwen2.ModelArgs(model_type="qwen2", rope_theta=1e6,
                                            tie_word_embeddings=True, **shape))
    elif kind == "qwen3":
        model = qwen3.Model(qwen3.ModelArgs(model_type="qwen3", head_dim=16, rope_theta=1e6,
                                            max_position_embeddings=4096,
                                            tie_word_embeddings=True, **shape))
    else:
        model = llama.Model(llama.ModelArgs(
            model_type="llama", rope_theta=5e5, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            **shape))
    mx.random.seed(1)
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.3)
                                 for k, v in tree_flatten(model.parameters())]))
    mx.eval(model.parameters())
    return model
