"""The bundled task's oracle as a reward: exact, so it measures what the other rewards estimate."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardFunction


class TaskOracle(RewardFunction):
    """The bundled task's exact oracle: 1.0 for a correct response, 0.0 otherwise.

    The shipped configs set it as ``model.oracle`` (and ``grpo_verifiable.yaml`` as
    ``model.reward``); on a prompt of any other data it raises an error that names the option
    to change."""

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.tasks import score, solve

        for p in prompts:
            if solve(p) is None:
                raise ValueError(
                    f"TaskOracle: not a prompt of the bundled task suite: {p!r:.80}. The oracle "
                    "knows only the bundled task's answers: on your own data set "
                    "--model.oracle null (oracle: null under model: in the YAML) to skip the "
                    "oracle metrics, and as model.reward give a RewardModel or a RewardFunction "
                    "of your own"
                )
        return torch.tensor([score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)
