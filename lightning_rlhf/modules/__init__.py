"""The stages as LightningModules: orchestration only; the maths live in losses.py and advantages.py."""

from lightning_rlhf.modules.dpo import DPOModule
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule

__all__ = ["DPOModule", "RewardModule", "SFTModule"]
