"""lightning_rlhf: SFT -> reward model -> PPO (and GRPO, RLOO, DPO) as Lightning modules, one YAML per stage.

Imports are lazy so ``import lightning_rlhf`` stays cheap; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SFTModule": "lightning_rlhf.modules.sft",
    "SFTDataModule": "lightning_rlhf.data.sft",
    "RewardModule": "lightning_rlhf.modules.reward",
    "PreferenceDataModule": "lightning_rlhf.data.preference",
    "PPOModule": "lightning_rlhf.modules.ppo",
    "DPOModule": "lightning_rlhf.modules.dpo",
    "PromptDataModule": "lightning_rlhf.data.prompts",
    "RewardModel": "lightning_rlhf.rewards",
    "RewardAdapter": "lightning_rlhf.rewards",
    "WeightedSum": "lightning_rlhf.rewards",
    "RewardEnsemble": "lightning_rlhf.rewards",
    "GAE": "lightning_rlhf.advantages",
    "GroupRelative": "lightning_rlhf.advantages",
    "LeaveOneOut": "lightning_rlhf.advantages",
    "FixedKLController": "lightning_rlhf.kl",
    "AdaptiveKLController": "lightning_rlhf.kl",
    "KLPenalty": "lightning_rlhf.kl",
    "ValueHead": "lightning_rlhf.critics",
    "ScalarModelCritic": "lightning_rlhf.critics",
    "LoraCritic": "lightning_rlhf.critics",
    "ClippedSurrogate": "lightning_rlhf.policy_losses",
    "GSPO": "lightning_rlhf.policy_losses",
    "ModelOptions": "lightning_rlhf.models",
    "LoraOptions": "lightning_rlhf.models",
    "RewardFunction": "lightning_rlhf.rewards",
    "TaskOracle": "lightning_rlhf.rewards",
    "CallableReward": "lightning_rlhf.rewards",
    "HFExport": "lightning_rlhf.callbacks.export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_rlhf' has no attribute {name!r}")
