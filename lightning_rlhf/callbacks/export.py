"""Export a stage's result as an ordinary Hugging Face directory when fit ends."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.io import check_writable


class HFExport(Callback):
    """Write ``pl_module.export(dirpath)`` at the end of ``fit`` (rank zero, atomically).

    Args:
        dirpath: the export directory; the next stage's ``model_name_or_path`` points here.
        next_hint: what to tell the user to do with it (printed after the export).
    """

    def __init__(self, dirpath: str = "artifacts/export", next_hint: str = "") -> None:
        self.dirpath = dirpath
        self.next_hint = next_hint

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # a read-only or missing-permission export directory fails before training, not after
        if stage == "fit" and trainer.is_global_zero:
            check_writable(Path(self.dirpath).absolute().parent, "HFExport dirpath's parent")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted:
            rank_zero_info(f"fit was interrupted: {self.dirpath} not exported (checkpoints kept)")
            return
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            path = pl_module.export(self.dirpath)
            rank_zero_info(
                f"exported to {path}" + (f"\n{self.next_hint}" if self.next_hint else "")
            )
        trainer.strategy.barrier()
