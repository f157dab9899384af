"""Advantage estimation for RLHF: GAE over a critic's values, and the group baselines of GRPO and
RLOO; the estimators (``GAE``, ``GroupRelative``, ``LeaveOneOut``) are the RL stage's
``advantage`` component.

Pure PyTorch, with the conventions of ``masked.py`` (shapes, masks, float64 statistics). The
masked statistics (``masked.py``) and the KL estimators and controllers (``kl.py``) can be
imported from here too, as code and configs written against this module name them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_rlhf.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    penalized_rewards,
)
from lightning_rlhf.masked import (
    masked_fill_zero,
    masked_mean,
    masked_var,
    masked_whiten,
    zero_spread,
)

__all__ = [
    "GAE",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "FixedKLController",
    "GroupRelative",
    "LeaveOneOut",
    "gae",
    "group_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "leave_one_out_advantages",
    "masked_fill_zero",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "penalized_rewards",
    "zero_spread",
]

# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016), backwards over T.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    with ``V_{t+1}`` and ``A_{t+1}`` taken as 0 when position t+1 is masked or t = T-1: the
    step after the last valid token is terminal, so padding never leaks into valid positions
    (left or right padding both work). A masked position inside a row acts as an episode
    boundary. ``returns = A + V``. Inputs are detached; outputs are 0 at masked positions.

    Args:
        rewards: (B, T) per-token rewards (e.g. from :func:`penalized_rewards`).
        values: (B, T) value estimates V_t.
        mask: (B, T) 1 for valid tokens.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both (B, T), detached.
    """
    rewards = masked_fill_zero(rewards.detach(), mask)
    values = masked_fill_zero(values.detach(), mask)
    mask = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages.append(adv)
        next_value, next_adv = values[:, t], adv  # both already 0 where mask[:, t] == 0
    advantages_t = torch.stack(advantages[::-1], dim=1)  # (B, T)
    returns = advantages_t + values  # both are 0 at masked positions
    return advantages_t, returns


# ---------------------------------------------------------------------------------------------
# group baselines (GRPO / RLOO)
# ---------------------------------------------------------------------------------------------


def _check_groups(scores: Tensor, group_size: int, min_size: int) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size}, got {group_size}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {scores.shape[0]} is not divisible by group_size {group_size}"
        )


def group_advantages(
    scores: Tensor,
    group_size: int,
    normalize_std: bool = True,
    eps: float = 1e-6,
    unbiased: bool = False,
) -> Tensor:
    """GRPO advantages (Shao et al. 2024): score relative to its group of G completions.

    With ``s`` reshaped to (B/G, G), one row per prompt:
    ``A = (s - mean_g(s)) / (std_g(s) + eps)`` if ``normalize_std`` else ``A = s - mean_g(s)``.
    ``std_g`` is the *population* standard deviation by default (divide by G), so G = 1 is
    well defined (A = 0); ``unbiased=True`` takes the sample std (divide by G - 1), as TRL's and
    verl's GRPO do: the advantages are then smaller by sqrt((G - 1) / G).
    The statistics are taken in float64, and a group whose std is rounding noise
    (:func:`zero_spread`) gets A = 0 exactly: so does every group of identical scores.

    Args:
        scores: (B,) sequence scores, consecutive groups of ``group_size`` share a prompt.
        group_size: G, completions per prompt (the RL stage's ``ppo.samples_per_prompt``); must divide B.
        normalize_std: divide by the group std.
        eps: added to the std.
        unbiased: the sample std (G - 1) instead of the population std (G).

    Returns:
        (B,) advantages, in ``scores``' dtype.
    """
    _check_groups(scores, group_size, min_size=1)
    grouped = scores.view(-1, group_size)  # (B/G, G)
    g64 = grouped.double()
    adv = g64 - g64.mean(dim=1, keepdim=True)
    std = g64.std(dim=1, unbiased=False, keepdim=True)  # (B/G, 1)
    if normalize_std:
        adv = adv / (g64.std(dim=1, unbiased=unbiased, keepdim=True) + eps)
    adv = torch.where(zero_spread(std, grouped, dim=1), 0.0, adv)
    return adv.to(scores.dtype).reshape(-1)


def leave_one_out_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO advantages (Ahmadian et al. 2024): score minus the mean of the others in its group.

    ``A_i = s_i - (sum_g(s) - s_i) / (G - 1) = G / (G - 1) * (s_i - mean_g(s))``, in float64,
    with 0 for a group whose spread is rounding noise (:func:`zero_spread`), as for identical
    scores.

    Args:
        scores: (B,) sequence scores, consecutive groups of ``group_size`` share a prompt.
        group_size: G >= 2, completions per prompt (``ppo.samples_per_prompt``); must divide B.

    Returns:
        (B,) advantages, in ``scores``' dtype.
    """
    _check_groups(scores, group_size, min_size=2)
    grouped = scores.view(-1, group_size)  # (B/G, G)
    g64 = grouped.double()
    baseline = (g64.sum(dim=1, keepdim=True) - g64) / (group_size - 1)
    std = g64.std(dim=1, unbiased=False, keepdim=True)  # (B/G, 1)
    adv = torch.where(zero_spread(std, grouped, dim=1), 0.0, g64 - baseline)
    return adv.to(scores.dtype).reshape(-1)


# ---------------------------------------------------------------------------------------------
# advantage estimators: the RL stage's pluggable part (PPO's GAE, GRPO, RLOO)
# ---------------------------------------------------------------------------------------------


class AdvantageEstimator:
    """Turns a rollout's per-token rewards into per-token advantages.

    ``rewards`` come from :func:`penalized_rewards`: the score at each response's last token and,
    when the KL penalty is in the reward, ``-beta * kl`` at every token. Subclasses implement
    ``__call__(rewards, values, mask, samples_per_prompt) -> (advantages, returns)``, all (B, T).

    Attributes:
        needs_critic: the estimator uses ``values`` (a learned critic is loaded and trained).
        min_samples_per_prompt: the fewest samples per prompt it works with.
    """

    needs_critic: bool = False
    min_samples_per_prompt: int = 1

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, samples_per_prompt: int
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class GAE(AdvantageEstimator):
    """PPO's advantages: :func:`gae` over per-token rewards and a learned critic's values.

    Args:
        gamma: discount, in [0, 1].
        lam: GAE λ, in [0, 1]; 1 gives Monte-Carlo returns minus the value baseline.
    """

    needs_critic = True

    def __init__(self, gamma: float = 1.0, lam: float = 0.95) -> None:
        if not (0 <= gamma <= 1 and 0 <= lam <= 1):
            raise ValueError(f"GAE gamma and lam must be in [0, 1], got {gamma}, {lam}")
        self.gamma, self.lam = gamma, lam

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, samples_per_prompt: int
    ) -> tuple[Tensor, Tensor]:
        return gae(rewards, values, mask, self.gamma, self.lam)


def _sequence_advantages(seq_adv: Tensor, returns: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast (B,) advantages and returns to every valid token: (B, T) each."""
    B, T = mask.shape
    return (
        masked_fill_zero(seq_adv.unsqueeze(1).expand(B, T), mask),
        masked_fill_zero(returns.unsqueeze(1).expand(B, T), mask),
    )


class GroupRelative(AdvantageEstimator):
    """GRPO (Shao et al. 2024): a response's return relative to the others sampled for its prompt.

    The return of a response is the sum of its per-token rewards (its score, minus β·KL when the
    penalty is in the reward); :func:`group_advantages` over each prompt's ``samples_per_prompt``
    responses gives one advantage, shared by every token of the response. No critic.

    Args:
        scale_by_std: divide by the group's standard deviation (GRPO); False keeps the
            mean-centred return (Dr. GRPO, Liu et al. 2025), which does not up-weight groups
            whose responses barely differ.
        eps: added to the standard deviation.
        std: the group's "population" standard deviation (divide by G; the default, which the
            shipped configs' numbers were measured with) or its "sample" one (divide by G − 1,
            as TRL and verl do). The choice rescales every advantage by the same factor
            sqrt(G / (G − 1)) (1.07 for groups of 8), which the learning rate absorbs.
    """

    min_samples_per_prompt = 2

    def __init__(
        self,
        scale_by_std: bool = True,
        eps: float = 1e-6,
        std: Literal["population", "sample"] = "population",
    ) -> None:
        if std not in ("population", "sample"):
            raise ValueError(f"advantage.std must be 'population' or 'sample', got {std!r}")
        self.scale_by_std, self.eps, self.std = scale_by_std, eps, std

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, samples_per_prompt: int
    ) -> tuple[Tensor, Tensor]:
        returns = masked_fill_zero(rewards, mask).sum(1)  # (B,)
        unbiased = self.std == "sample"
        adv = group_advantages(returns, samples_per_prompt, self.scale_by_std, self.eps, unbiased)
        return _sequence_advantages(adv, returns, mask)


class LeaveOneOut(AdvantageEstimator):
    """RLOO (Ahmadian et al. 2024): a response's return minus the mean return of the other
    responses to its prompt (:func:`leave_one_out_advantages`), shared by all its tokens. No
    critic; needs at least 2 responses per prompt."""

    min_samples_per_prompt = 2

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, samples_per_prompt: int
    ) -> tuple[Tensor, Tensor]:
        returns = masked_fill_zero(rewards, mask).sum(1)  # (B,)
        adv = leave_one_out_advantages(returns, samples_per_prompt)
        return _sequence_advantages(adv, returns, mask)
