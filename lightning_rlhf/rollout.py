"""Batched, KV-cached sampling from a causal LM, under no_grad."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SamplingOptions:
    """How responses are sampled.

    Attributes:
        max_new_tokens: longest response; a response that has not emitted EOS by then is cut.
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: sample among the k most likely tokens (0: no limit).
        top_p: nucleus sampling mass (1.0: no limit).
    """

    max_new_tokens: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def response_mask(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """(B, R) 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = response_ids == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    sampling: SamplingOptions,
    eos_token_id: int,
    pad_token_id: int,
    synced: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample responses to left-padded prompts.

    Args:
        input_ids: (B, P) left-padded prompt ids.
        attention_mask: (B, P).
        synced: keep generating until every rank is done (FSDP/ZeRO-3: each forward is a
            collective, so a rank that stopped early would hang the others).
    Returns:
        response_ids: (B, R) with R <= max_new_tokens, pad after each row's first EOS.
        response_mask: (B, R) 1 on response tokens up to and including the first EOS.
    """
    greedy = sampling.temperature == 0
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_k=None if greedy or sampling.top_k == 0 else sampling.top_k,
        top_p=None if greedy else sampling.top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        synced_gpus=synced,
    )
    model.train(was_training)
    response = out[:, input_ids.shape[1] :]  # (B, R)
    mask = response_mask(response, eos_token_id)
    return response.masked_fill(mask == 0, pad_token_id), mask


def decode_responses(tokenizer, response_ids: Tensor, mask: Tensor) -> list[str]:
    """Response texts without padding and special tokens."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(response_ids, mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
