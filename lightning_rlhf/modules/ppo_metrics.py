"""The training metrics of one RL iteration, from its rollout, the update's statistics and the
rollout statistics; ``PPOModule`` logs them (and writes the last ones to ppo_stats.json)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.losses import logprob_mismatch
from lightning_rlhf.masked import masked_var
from lightning_rlhf.rollout import Generation, rollout_metrics
from lightning_rlhf.types import Rollout, RolloutStats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 − Var[R − V] / Var[R]`` over the valid tokens (masked, unbiased; Var[R] clamped at
    1e-8): 1 for a perfect critic, 0 for one that predicts the mean, negative for a worse one.

    Args:
        values: (B, T) V_old.
        returns: (B, T) the returns it is trained toward.
        mask: (B, T) 1 on response tokens.

    Returns:
        0-dim.
    """
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


def engine_metrics(
    generation: Generation,
    logprobs: Tensor,
    mask: Tensor,
    seconds: float,
    max_new_tokens: int,
    eos_token_id: int,
) -> dict[str, Tensor]:
    """``rollout/*``: what the engine generated and how fast (``rollout_metrics``), and its
    sampling log-probs against π_old, (B, R) ``logprobs`` (all 0 when π_old is the engine's)."""
    mismatch = logprob_mismatch(generation.logprobs, logprobs, mask)
    return {
        **rollout_metrics(generation, seconds, max_new_tokens, eos_token_id),
        **{f"rollout/{k}": v for k, v in mismatch.items()},
    }


def iteration_metrics(
    r: Rollout,
    info: RolloutStats,
    stats: dict[str, Tensor],
    kl: dict[str, Tensor],
    beta: float,
    eos_token_id: int,
    with_critic: bool,
) -> dict[str, Tensor]:
    """``train/*`` and ``time/*`` metrics: rewards before and after shaping and the KL penalty,
    the KL to πref per response by each estimator (``kl``, from ``kl.sequence_kl``), β (before
    this iteration's update), length, EOS rate, the update's mean statistics and, with a critic,
    the explained variance."""
    mask = r.response_mask.float()
    eos = (r.response_ids == eos_token_id).any(dim=1).float()
    metrics = {
        "train/reward": info.raw_scores.mean(),
        "train/reward_shaped": r.scores.mean(),
        "train/reward_with_penalty": (r.rewards * mask).sum(1).mean(),
        **{f"train/kl_{name}": value for name, value in kl.items()},
        "train/beta": torch.tensor(beta),
        "train/response_length": mask.sum(1).mean(),
        "train/eos_rate": eos.mean(),
        **{f"train/{k}": v for k, v in stats.items()},
        "time/generation": torch.tensor(info.generation_s),
        "time/scoring": torch.tensor(info.scoring_s),
        "time/update": torch.tensor(info.update_s),
        **info.engine,
    }
    if with_critic:
        metrics["train/explained_variance"] = explained_variance(r.values, r.returns, mask)
    metrics.update({f"train/reward/{k}": torch.tensor(v) for k, v in info.reward_stats.items()})
    return metrics
