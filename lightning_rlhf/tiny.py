"""The embedded default model: a tiny Llama with a byte-level tokenizer, built from a config.

It is written as an ordinary Hugging Face directory, so every stage loads it exactly as it would load
``Qwen/Qwen2.5-0.5B``: ``from_pretrained(path)``. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_rlhf.export_target import check_export_target, write_marker
from lightning_rlhf.io import atomic_dir


def tiny_llama(
    tokenizer,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
):
    """A randomly initialised Llama whose vocabulary, pad and EOS ids are ``tokenizer``'s: MLP
    4 × hidden, no BOS, embedding tied to the LM head; ``seed`` fixes the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def init_tiny_model(
    out_dir: str | Path,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama (~1.1M parameters at the defaults) and its tokenizer.

    The tokenizer is ByT5's byte tokenizer (needs no files): ids 0 pad, 1 EOS, 2 unk, 3-258 bytes,
    and ByT5's 125 extra ids: a vocabulary of 384.
    """
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    model = tiny_llama(tokenizer, hidden_size, num_layers, num_heads, max_positions, seed)
    with atomic_dir(out_dir, guard=check_export_target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, {"stage": "init-model", "seed": seed})
    return Path(out_dir)
