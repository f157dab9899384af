"""Several rewards as one: ``WeightedSum`` adds objectives, ``RewardEnsemble`` combines estimates
of one reward and penalises their disagreement."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardFunction, as_reward, check_scores


class _Combination(RewardFunction):
    """Several reward functions, one weight each, scored together."""

    def __init__(self, rewards: list[RewardFunction], weights: list[float] | None) -> None:
        weights = [1.0] * len(rewards) if weights is None else weights
        if not rewards or len(weights) != len(rewards):
            raise ValueError(
                f"{type(self).__name__} needs one weight per reward: {len(rewards)} rewards, "
                f"{len(weights)} weights"
            )
        self.rewards = [
            as_reward(r, f"{type(self).__name__}.rewards[{i}]") for i, r in enumerate(rewards)
        ]
        self.weights = weights
        self._stats: dict[str, float] = {}

    def to(self, device: torch.device | str) -> _Combination:
        for r in self.rewards:
            r.to(device)
        return self

    def member_scores(self, prompts: list[str], responses: list[str]) -> Tensor:
        """(n_rewards, B) on the CPU: each member's scores, their shape checked and named if wrong
        (non-finite scores pass through to the caller's check, which knows the NaN policy)."""
        n = len(responses)
        return torch.stack(
            [
                check_scores(r(prompts, responses), n, r, allow_nonfinite=True).cpu()
                for r in self.rewards
            ]
        )

    def stats(self) -> dict[str, float]:
        return self._stats


class WeightedSum(_Combination):
    """Σ_i weight_i · reward_i(prompts, responses): several objectives added up (e.g. a reward
    model and a format bonus).

    Args:
        rewards: the reward functions.
        weights: one weight per reward function (default: all 1).
    """

    def __init__(self, rewards: list[RewardFunction], weights: list[float] | None = None) -> None:
        super().__init__(rewards, weights)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.member_scores(prompts, responses)  # (n, B)
        return (torch.tensor(self.weights).unsqueeze(1) * scores).sum(0)


class RewardEnsemble(_Combination):
    """Several estimates of one reward, combined as ``mean_w − k · std``: a guard against reward
    hacking, since a response that fools one reward model rarely fools all of them.

    With members' scores ``s_i`` (n, B) and weights normalised to ``w_i = weight_i / Σ weight``:
    ``mean = Σ_i w_i s_i``, ``std = sqrt(Σ_i w_i (s_i − mean)²)`` (per response), and the score is
    ``mean − disagreement_coef · std``. Members should share a scale (``RewardModel`` with
    ``normalize: true`` gives each mean 0 and std 1 on its validation pairs). ``stats()`` reports
    each member's mean score and the mean disagreement of the last call (logged by the RL stage).

    Args:
        rewards: the members: reward models or functions.
        weights: one non-negative weight per member (default: equal).
        disagreement_coef: k, the penalty per unit of disagreement (0: the weighted mean).
    """

    def __init__(
        self,
        rewards: list[RewardFunction],
        weights: list[float] | None = None,
        disagreement_coef: float = 0.0,
    ) -> None:
        super().__init__(rewards, weights)
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"RewardEnsemble weights must be >= 0 with a positive sum, got {self.weights}"
            )
        if disagreement_coef < 0:
            raise ValueError(f"disagreement_coef must be >= 0, got {disagreement_coef}")
        self.disagreement_coef = disagreement_coef

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.member_scores(prompts, responses)  # (n, B)
        w = torch.tensor(self.weights) / sum(self.weights)  # (n,)
        mean = (w.unsqueeze(1) * scores).sum(0)  # (B,)
        std = (w.unsqueeze(1) * (scores - mean) ** 2).sum(0).sqrt()  # (B,)
        self._stats = {
            "disagreement": std.mean().item(),
            **{f"member_{i}": s.mean().item() for i, s in enumerate(scores)},
        }
        return mean - self.disagreement_coef * std
