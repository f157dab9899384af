"""Rewards: anything that maps (prompts, responses) to one score per response.

A reward is chosen in YAML by ``class_path``: the bundled task's oracle (``oracle.py``), a
reward-model directory (``models.py``), a weighted sum of several or an ensemble penalised for
disagreement (``combinations.py``), or a user's own ``RewardFunction`` subclass (``base.py``).
Rewards see text, so a reward model with another tokenizer than the policy's just works (it
re-tokenises).
"""

from lightning_rlhf.rewards.base import (
    CallableReward,
    RewardFunction,
    as_reward,
    check_scores,
    reward_functions,
)
from lightning_rlhf.rewards.combinations import RewardEnsemble, WeightedSum
from lightning_rlhf.rewards.models import RewardAdapter, RewardModel
from lightning_rlhf.rewards.oracle import TaskOracle

__all__ = [
    "CallableReward",
    "RewardAdapter",
    "RewardEnsemble",
    "RewardFunction",
    "RewardModel",
    "TaskOracle",
    "WeightedSum",
    "as_reward",
    "check_scores",
    "reward_functions",
]
