"""Export a stage's result as an ordinary Hugging Face directory when fit ends."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.export_target import acquire_lock, check_export_target, release_lock
from lightning_rlhf.io import check_writable


class HFExport(Callback):
    """Write ``pl_module.export(dirpath)`` at the end of ``fit`` (rank zero, atomically).

    ``dirpath`` must be absent, empty or an earlier export (never a directory of other files:
    the export replaces it whole), and is locked for this run from the start of ``fit`` to the
    end of the export; both are checked before the first step.

    Args:
        dirpath: the export directory; the next stage's ``model_name_or_path`` points here.
        next_hint: what to tell the user to do with it (printed after the export).
        allow_untrained: export even when the run took no optimizer step (the starting
            weights, e.g. with ``trainer.max_steps: 0``); off, such a run refuses to replace
            ``dirpath``, which may hold a trained export.
    """

    def __init__(
        self, dirpath: str = "artifacts/export", next_hint: str = "", allow_untrained: bool = False
    ) -> None:
        self.dirpath = dirpath
        self.next_hint = next_hint
        self.allow_untrained = allow_untrained
        self._lock: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # a read-only, foreign or busy export directory fails before training, not after
        if stage == "fit" and trainer.is_global_zero:
            check_writable(Path(self.dirpath).absolute().parent, "HFExport dirpath's parent")
            check_export_target(self.dirpath)
            self._lock = acquire_lock(self.dirpath)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            self._export(trainer, pl_module)
        finally:
            self._release()

    def _export(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted:
            rank_zero_info(f"fit was interrupted: {self.dirpath} not exported (checkpoints kept)")
            return
        if trainer.global_step == 0 and not self.allow_untrained:  # every rank, no barrier hangs
            raise ValueError(
                f"HFExport: the run took no optimizer step (trainer.max_steps "
                f"{trainer.max_steps}), so its weights are the untrained starting model; "
                f"{Path(self.dirpath).absolute()} was not exported and is unchanged. Set "
                "allow_untrained: true on HFExport to export them anyway"
            )
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            path = pl_module.export(self.dirpath)
            rank_zero_info(
                f"exported to {path}" + (f"\n{self.next_hint}" if self.next_hint else "")
            )
        trainer.strategy.barrier()

    def _release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        self._release()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()
