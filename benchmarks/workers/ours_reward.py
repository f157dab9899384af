"""Our reward stage as users run it: RewardModule + PreferenceDataModule under a Lightning Trainer.

Chosen and rejected go through one forward (the module's own path), padded or, with
``padding_free``, packed; logging and checkpointing off, gradient clipping at 1.0, no reward
centering.
"""

from __future__ import annotations

from typing import Any

from common import run_worker
from lit import data_settings, fit, module_settings

from lightning_rlhf.data.preference import PreferenceDataModule
from lightning_rlhf.modules.reward import RewardModule


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    module = RewardModule(
        **module_settings(cfg),
        center_coef=0.0,
        oracle=None,
        padding_free=cfg.get("padding_free", False),
    )
    data = PreferenceDataModule(
        **data_settings(cfg),
        max_length=cfg["max_length"],
        pad_to_multiple_of=cfg.get("pad_to_multiple_of", 1),
    )
    return fit(cfg, module, data)


if __name__ == "__main__":
    run_worker(run)
