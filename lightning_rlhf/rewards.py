"""The reward interface: anything that maps (prompts, responses) to one score per response.

A reward is chosen in YAML by ``class_path``: the bundled task's oracle, a user's Python class, a
reward-model directory, or a weighted sum of several.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RewardFunction:
    """Base class: ``reward(prompts, responses) -> (B,) float tensor``; subclass and implement."""

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        raise NotImplementedError


class TaskOracle(RewardFunction):
    """The bundled task's exact oracle: 1.0 for a correct response, 0.0 otherwise."""

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.tasks import score

        return torch.tensor([score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)
