"""Reading a model's outputs where they mean something: the last real token of each row, the
position ids a left-padded row was trained with, and a scalar head's values and scores."""

from __future__ import annotations

import torch
from torch import nn


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token of each row, under left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)  # +1: an all-pad row gives 0


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that count real tokens only (0 on left padding), as the model saw them
    in training: under left padding a row's first real token is at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_scalars(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) float32 head output at every position of a scalar-head model (reward or value).

    Reads the head ourselves instead of the model's pooled output: transformers pools at the token
    before the first ``pad_token_id``, which is wrong when pad == EOS or under left padding.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    head = getattr(base, "classifier", None) if head is None else head
    if head is None:
        raise ValueError(f"{type(base).__name__} has no `score` or `classifier` head")
    trunk = getattr(base, base.base_model_prefix)
    if position_ids is None:
        position_ids = padded_positions(attention_mask)
    hidden = trunk(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    return head(hidden).squeeze(-1).float()


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B,) reward of each sequence, read at its last real token."""
    values = token_scalars(model, input_ids, attention_mask)  # (B, T)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
