"""Advantage estimation, KL penalties and KL controllers for RLHF.

Pure PyTorch. Conventions used throughout:

* ``B`` is the batch size, ``T`` the number of (response) tokens per row.
* A ``mask`` is a float or bool tensor with 1 at valid tokens and 0 elsewhere. Masked positions
  are *selected away* (``torch.where``), never multiplied by 0: a NaN or inf there (padding, a
  ``-inf`` logit under top-k) cannot reach a valid position's result. Sums over an all-zero mask
  are divided by ``max(count, 1)``, so empty masks give 0 rather than NaN.
* Group and batch statistics are taken in float64 and a spread below :func:`zero_spread`'s
  tolerance counts as none, so identical scores have advantage exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------


def masked_fill_zero(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` is 1, exactly 0 elsewhere (even where ``x`` is NaN or inf).

    ``x * mask`` would keep ``nan * 0 = nan`` and ``inf * 0 = nan``; ``torch.where`` does not.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x`` (or broadcastable to it).

    Returns:
        same shape as ``x``.
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def zero_spread(std: Tensor, x: Tensor, dim: int | None = None) -> Tensor:
    """Whether a standard deviation is rounding noise: ``std <= 2 * eps(x.dtype) * max|x|``.

    Values that differ by a few units in the last place of the dtype they came in (e.g. a
    float32 sum of per-token rewards) have no real spread; dividing their residue by
    ``std + eps`` would turn it into advantages of order 1 (eight float32 12.7s: +0.49 each).

    Args:
        std: the spread, 0-dim (``dim=None``) or with ``dim`` kept, e.g. (B/G, 1).
        x: the values it was measured on, e.g. (B/G, G); their dtype sets the tolerance.
        dim: the dimension reduced for ``std`` (``None``: all).

    Returns:
        bool tensor shaped like ``std``.
    """
    scale = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return std <= 2 * torch.finfo(x.dtype).eps * scale.to(std.dtype)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``sum(where(m, x, 0)) / max(sum(m), 1)`` over all elements (``dim=None``, 0-dim result) or
    along ``dim`` (that dimension is reduced). NaN or inf at masked positions is ignored.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x`` (or broadcastable to it).
        dim: dimension to reduce; ``None`` reduces everything.

    Returns:
        0-dim tensor if ``dim is None``, else ``x`` with ``dim`` removed, e.g. (B,).
    """
    kept = masked_fill_zero(x, mask)
    mask = mask.to(x.dtype)
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid elements.

    ``var = masked_mean((x - masked_mean(x))**2)``, multiplied by the Bessel correction
    ``n / (n - 1)`` when ``unbiased`` and ``n = sum(mask) > 1`` (no correction for n <= 1).
    Computed in float64, returned in ``x``'s dtype.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``.
        unbiased: apply Bessel's correction.

    Returns:
        0-dim tensor.
    """
    x64 = x.double()
    var = masked_mean((x64 - masked_mean(x64, mask)) ** 2, mask)
    if unbiased:
        n = mask.double().sum()
        var = var * n / (n - 1).clamp(min=1)  # n <= 1: var is 0 and stays 0
    return var.to(x.dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean, unit variance over the valid elements.

    ``y = (x - mean) / sqrt(var + eps)`` with ``mean``/``var`` from :func:`masked_mean` and
    :func:`masked_var` (unbiased) over all valid elements; if ``shift_mean`` is False the
    mean is added back (``y + mean``: rescale only). Masked positions are set to 0. Computed in
    float64; values whose spread is rounding noise (:func:`zero_spread`) give ``y = 0``
    (``mean`` when not ``shift_mean``), not their residue scaled up by ``1 / sqrt(eps)``.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``.
        shift_mean: whether the output is centred (True) or keeps the original mean.
        eps: added to the variance.

    Returns:
        same shape as ``x``.
    """
    kept = masked_fill_zero(x, mask)
    x64 = kept.double()
    mean = masked_mean(x64, mask)
    var = masked_var(x64, mask, unbiased=True)
    whitened = (x64 - mean) * torch.rsqrt(var + eps)
    whitened = torch.where(zero_spread(var.sqrt(), kept), 0.0, whitened)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------
# Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi, following J. Schulman,
# "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html, with
# log r = ref_logprobs - logprobs = log(pi_ref(x) / pi(x)).


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 estimator of KL(pi || pi_ref): ``k1 = -log r = logprobs - ref_logprobs``.

    Unbiased (E_pi[k1] = KL) but high variance and can be negative per token
    (Schulman, "Approximating KL Divergence").

    Args:
        logprobs: (B, T) log pi(x_t) of the sampled tokens.
        ref_logprobs: (B, T) log pi_ref(x_t) of the same tokens.

    Returns:
        (B, T).
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 estimator of KL(pi || pi_ref): ``k2 = 0.5 * (log r)**2``.

    Biased (its expectation is an f-divergence that matches KL only to second order) but low
    variance and always >= 0 (Schulman, "Approximating KL Divergence").

    Args:
        logprobs: (B, T) log pi(x_t) of the sampled tokens.
        ref_logprobs: (B, T) log pi_ref(x_t) of the same tokens.

    Returns:
        (B, T).
    """
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref): ``k3 = (r - 1) - log r``.

    Unbiased (E_pi[r - 1] = 0, so E_pi[k3] = E_pi[k1] = KL), lower variance than k1, and
    >= 0 per token since log r <= r - 1 (Schulman, "Approximating KL Divergence").

    Args:
        logprobs: (B, T) log pi(x_t) of the sampled tokens.
        ref_logprobs: (B, T) log pi_ref(x_t) of the same tokens.

    Returns:
        (B, T).
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# ---------------------------------------------------------------------------------------------
# PPO rewards and GAE
# ---------------------------------------------------------------------------------------------


def penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: KL penalty at every token plus the score at the last token.

    ``kl = KL_ESTIMATORS[estimator](logprobs, ref_logprobs)`` at valid positions (0 elsewhere) and
    ``rewards = -beta * kl``, then ``rewards[b, last[b]] += scores[b]`` where ``last[b]`` is
    the largest index t with ``mask[b, t] == 1`` (works for left, right or no padding).
    Rows whose mask is all zero get no score: their rewards and kl are all 0.

    Args:
        scores: (B,) sequence-level reward-model scores.
        logprobs: (B, T) policy log-probs of the sampled tokens.
        ref_logprobs: (B, T) reference-model log-probs of the same tokens.
        mask: (B, T) 1 for response tokens.
        beta: KL coefficient.
        estimator: one of ``KL_ESTIMATORS`` ("k1", "k2", "k3").

    Returns:
        ``(rewards, kl)``, both (B, T) and 0 at masked positions.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(KL_ESTIMATORS)}, got {estimator!r}")
    kl = masked_fill_zero(KL_ESTIMATORS[estimator](logprobs, ref_logprobs), mask)
    mask = mask.to(logprobs.dtype)
    rewards = -beta * kl
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values  # (B,), -1 if row empty
    has_token = (last >= 0).to(rewards.dtype)  # (B,)
    score = (scores.to(rewards.dtype) * has_token).unsqueeze(1)  # (B, 1)
    rewards = rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), score)
    return rewards, kl


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
        group_size: G, completions per prompt; must divide B.
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
        group_size: G >= 2, completions per prompt; must divide B.

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
    ``__call__(rewards, values, mask, group_size) -> (advantages, returns)``, all (B, T).

    Attributes:
        needs_critic: the estimator uses ``values`` (a learned critic is loaded and trained).
        min_group_size: the fewest samples per prompt it works with.
    """

    needs_critic: bool = False
    min_group_size: int = 1

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, group_size: int
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
        self, rewards: Tensor, values: Tensor, mask: Tensor, group_size: int
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
    penalty is in the reward); :func:`group_advantages` over each prompt's ``group_size``
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

    min_group_size = 2

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
        self, rewards: Tensor, values: Tensor, mask: Tensor, group_size: int
    ) -> tuple[Tensor, Tensor]:
        returns = masked_fill_zero(rewards, mask).sum(1)  # (B,)
        unbiased = self.std == "sample"
        adv = group_advantages(returns, group_size, self.scale_by_std, self.eps, unbiased)
        return _sequence_advantages(adv, returns, mask)


class LeaveOneOut(AdvantageEstimator):
    """RLOO (Ahmadian et al. 2024): a response's return minus the mean return of the other
    responses to its prompt (:func:`leave_one_out_advantages`), shared by all its tokens. No
    critic; needs at least 2 responses per prompt."""

    min_group_size = 2

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, group_size: int
    ) -> tuple[Tensor, Tensor]:
        returns = masked_fill_zero(rewards, mask).sum(1)  # (B,)
        adv = leave_one_out_advantages(returns, group_size)
        return _sequence_advantages(adv, returns, mask)


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


def _check_beta(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


class FixedKLController:
    """Constant KL coefficient.

    Args:
        beta: KL coefficient (>= 0), used as ``rewards = score - beta * kl``.
    """

    def __init__(self, beta: float = 0.05) -> None:
        _check_beta("beta", beta)
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        """Return ``{"beta": beta}``."""
        return {"beta": self.beta}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore ``beta`` from :meth:`state_dict`."""
        _check_beta("beta", state_dict["beta"])
        self.beta = float(state_dict["beta"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences".

    After each update: ``error = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``beta *= 1 + error * n_steps / horizon`` (beta grows while KL is above target).

    Args:
        init_beta: initial KL coefficient (>= 0).
        target: target KL per sequence (> 0), in the same units as ``current_kl``.
        horizon: number of steps (samples) over which the proportional controller acts (> 0).
    """

    def __init__(self, init_beta: float = 0.1, target: float = 6.0, horizon: int = 10000) -> None:
        _check_beta("init_beta", init_beta)
        if not target > 0:
            raise ValueError(f"target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Apply ``beta *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Return ``{"beta": beta}`` (target and horizon come from the config)."""
        return {"beta": self.beta}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore ``beta`` from :meth:`state_dict`."""
        _check_beta("beta", state_dict["beta"])
        self.beta = float(state_dict["beta"])
