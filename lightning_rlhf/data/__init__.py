"""Data modules, the loader and the collator family."""

from lightning_rlhf.data.preference import PreferenceDataModule
from lightning_rlhf.data.sft import SFTDataModule

__all__ = ["PreferenceDataModule", "SFTDataModule"]
