"""Our SFT stage as users run it: SFTModule + SFTDataModule under a Lightning Trainer.

Logging and checkpointing are off (a logger would write files); everything else is the stage's own
code path: data module encoding and collation (padding or packing), the module's loss, Lightning's
optimisation loop with gradient clipping at 1.0.
"""

from __future__ import annotations

from typing import Any

from common import run_worker
from lit import data_settings, fit, module_settings

from lightning_rlhf.data.sft import SFTDataModule
from lightning_rlhf.modules.sft import SFTModule


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    module = SFTModule(**module_settings(cfg), oracle=None)
    data = SFTDataModule(
        **data_settings(cfg),
        max_length=cfg["max_length"],
        packing=cfg.get("packing", False),
        pad_to_multiple_of=cfg.get("pad_to_multiple_of", 1),
    )
    return fit(cfg, module, data)


if __name__ == "__main__":
    run_worker(run)
