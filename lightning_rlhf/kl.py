"""The KL penalty of the RL stage: the per-token estimators, the penalised per-token rewards, β's
controllers, and ``KLPenalty``, the component that puts them together for ``PPOModule``, which
calls :meth:`KLPenalty.rewards` when a rollout is scored, :meth:`KLPenalty.loss` in each update
and :meth:`KLPenalty.update` once per iteration (in ``training_step``).

Pure PyTorch, with the conventions of ``masked.py`` (shapes, masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lightning_rlhf.masked import masked_fill_zero, masked_mean

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


# ---------------------------------------------------------------------------------------------
# the component
# ---------------------------------------------------------------------------------------------


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean over rows of each row's summed per-token KL, for every estimator.

    ``kl[name] = mean_b sum_t mask[b, t] * KL_ESTIMATORS[name](logprobs, ref_logprobs)[b, t]``:
    the KL of a whole response, in nats (the unit of ``AdaptiveKLController.target``).

    Args:
        logprobs: (B, T) log π(token) of the sampled tokens.
        ref_logprobs: (B, T) log πref(token).
        mask: (B, T) 1 on response tokens.

    Returns:
        ``{"k1": 0-dim, "k2": 0-dim, "k3": 0-dim}``.
    """
    mask = mask.to(logprobs.dtype)
    return {
        name: (fn(logprobs, ref_logprobs) * mask).sum(1).mean()
        for name, fn in KL_ESTIMATORS.items()
    }


class KLPenalty:
    """β·KL(π‖πref): where it goes, how it is estimated and how β moves.

    Args:
        controller: β: ``FixedKLController`` or ``AdaptiveKLController`` (toward a target KL per
            response); None: ``FixedKLController(beta=0.05)``.
        estimator: the per-token KL estimator: "k1" (log-ratio), "k2" (½ log-ratio²) or "k3"
            ((r−1) − log r, never negative); all three are logged.
        placement: "reward" (β·KL subtracted from the per-token rewards before the advantages)
            or "loss" (β·mean KL of the current policy added to the loss, as in GRPO; use it with
            "k3").
    """

    def __init__(
        self,
        controller: FixedKLController | AdaptiveKLController | None = None,
        estimator: Literal["k1", "k2", "k3"] = "k1",
        placement: Literal["reward", "loss"] = "reward",
    ) -> None:
        if estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl.estimator must be one of {sorted(KL_ESTIMATORS)}, got {estimator!r}"
            )
        if placement not in ("reward", "loss"):
            raise ValueError(f"kl.placement must be 'reward' or 'loss', got {placement!r}")
        self.controller = controller if controller is not None else FixedKLController(0.05)
        self.estimator = estimator
        self.placement = placement

    @property
    def beta(self) -> float:
        return self.controller.beta

    def rewards(
        self, scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor
    ) -> Tensor:
        """(B, T) per-token rewards: the score at the last token, minus β·KL when in the reward."""
        beta = self.beta if self.placement == "reward" else 0.0
        return penalized_rewards(scores, logprobs, ref_logprobs, mask, beta, self.estimator)[0]

    def loss(
        self, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``β · masked_mean(KL(logprobs, ref_logprobs))`` when placed in the loss, with stat
        ``kl_loss`` (the mean KL); ``(None, {})`` when placed in the reward."""
        if self.placement != "loss":
            return None, {}
        kl = masked_mean(KL_ESTIMATORS[self.estimator](logprobs, ref_logprobs), mask)
        return self.beta * kl, {"kl_loss": kl.detach()}

    def update(self, kl: float, n_steps: int) -> None:
        """Move β after an iteration whose responses had mean KL ``kl`` (this estimator's, per
        response, averaged over ranks) over ``n_steps`` responses."""
        self.controller.update(kl, n_steps=n_steps)

    def state_dict(self) -> dict[str, float]:
        """The controller's state (``{"beta": β}``), saved under the checkpoint's
        ``kl_controller`` key."""
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.controller.load_state_dict(state_dict)
