"""Special tokens every model format shares: the ones that end a turn."""

from __future__ import annotations

from collections.abc import Mapping

# Texts of tokens that end a turn in common chat formats (llama.cpp's EOG list, abridged).
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
)

def end_of_turn_ids(eos_ids: set[int], vocab: Mapping[str, int], special_ids: set[int]) -> set[int]:
    """`eos_ids` plus any special end-of-turn token (im_end, eot_id, ...) in the vocabulary."""
    ids = set(eos_ids)
    for text in END_OF_TURN_TOKENS:
        token_id = vocab.get(text)
        if token_id is not None and token_id in special_ids:
            ids.add(token_id)
    return ids
