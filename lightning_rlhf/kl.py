"""The KL penalty of the RL stage, one component: β and its controller, the estimator, the placement.

The estimators (k1, k2, k3), ``penalized_rewards`` and the controllers are the pure maths in
``advantages.py``; ``KLPenalty`` puts them together for ``PPOModule``, which calls
:meth:`KLPenalty.rewards` when a rollout is scored, :meth:`KLPenalty.loss` in each update and
:meth:`KLPenalty.update` once per iteration (in ``training_step``).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lightning_rlhf.advantages import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    masked_mean,
    penalized_rewards,
)


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
