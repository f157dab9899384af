"""Which pairs to ask about first: the queue's priority (higher is shown sooner).

random:       a uniform draw, the baseline.
uncertainty:  ``−|r_A − r_B|`` under one reward model (several: their mean): the pairs the
              model can least tell apart.
disagreement: ``std_i(s_i,A − s_i,B)`` over an ensemble's members: the pairs whose margin the
              members disagree on most (what a label teaches them most about).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.label.db import ORDERS


def uncertainty_priority(r_a: Tensor, r_b: Tensor) -> Tensor:
    """``−|r_a − r_b|``: (B,), (B,) -> (B,); 0 for a pair the model scores equal."""
    return -(r_a - r_b).abs()


def disagreement_priority(s_a: Tensor, s_b: Tensor) -> Tensor:
    """Population std over members of each pair's margin: (n, B), (n, B) -> (B,).
    ``m_i = s_a[i] − s_b[i]``, ``sqrt(mean_i (m_i − mean m)²)``."""
    if s_a.shape != s_b.shape or s_a.dim() != 2 or s_a.shape[0] < 2:
        raise ValueError(
            f"disagreement needs (n >= 2, B) member scores for both sides, got "
            f"{tuple(s_a.shape)} and {tuple(s_b.shape)}"
        )
    return (s_a - s_b).std(dim=0, unbiased=False)


def _member_scores(rewards: list[str], prompts: list[str], texts: list[str]) -> Tensor:
    from lightning_rlhf.rewards import RewardModel

    return torch.stack([RewardModel(path)(prompts, texts) for path in rewards])  # (n, B)


def priorities(
    order: str,
    prompts: list[str],
    texts_a: list[str],
    texts_b: list[str],
    rewards: list[str] = (),
    seed: int = 0,
) -> list[float]:
    """One priority per pair for ``order`` (one of ORDERS); ``rewards``: reward model dirs
    (uncertainty: one or more, averaged; disagreement: two or more, the ensemble's members)."""
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {list(ORDERS)}, got {order!r}")
    if order == "random":
        return torch.rand(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    need = 1 if order == "uncertainty" else 2
    if len(rewards) < need:
        raise ValueError(
            f"--order {order} needs at least {need} --reward model dir(s), got {len(rewards)}"
        )
    s_a = _member_scores(list(rewards), prompts, texts_a)
    s_b = _member_scores(list(rewards), prompts, texts_b)
    if order == "uncertainty":
        return uncertainty_priority(s_a.mean(0), s_b.mean(0)).tolist()
    return disagreement_priority(s_a, s_b).tolist()
