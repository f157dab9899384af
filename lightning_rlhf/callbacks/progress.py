"""Progress that reads as the run's: one bar to ``max_steps``, and a validation before step 1."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


def _steps_bound(trainer: Trainer) -> int | None:
    """The run's optimizer steps when ``max_steps`` ends it (epochs unbounded), else None."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1):
        return trainer.max_steps
    return None


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with one training bar for the whole run when ``max_steps``
    bounds it: ``step 120/400`` (optimizer steps; an RL iteration takes ppo_epochs ×
    num_minibatches of them), rather than a bar per epoch titled ``Epoch 1/-2``. Runs bounded by
    epochs keep Lightning's bar as it is."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = _steps_bound(trainer)
        if total is None:
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # the first epoch (or the first after a resume)
            self.train_progress_bar_id = self._add_task(total, self._description(trainer))
            self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if _steps_bound(trainer) is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is None:
            return
        self.progress.update(
            self.train_progress_bar_id,
            completed=trainer.global_step,
            description=self._description(trainer),
        )
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if _steps_bound(trainer) is None:
            super().on_train_epoch_end(trainer, pl_module)
        else:  # the bar spans epochs: only its metrics change here
            self._update_metrics(trainer, pl_module)

    @staticmethod
    def _description(trainer: Trainer) -> str:
        return f"epoch {trainer.current_epoch} · step"


class ValidateAtStart(Callback):
    """Runs the validation loop once before the first training step, so every validation curve
    starts at step 0 with the starting policy's (or reward model's) score: a plot of the RL stage
    then shows the gain over its SFT start. Skipped when resuming past step 0."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 or trainer.limit_val_batches == 0:
            return
        # as Lightning's training loop runs a validation inside an epoch
        logger_connector = trainer._logger_connector
        first_loop_iter = logger_connector._first_loop_iter
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
        logger_connector._first_loop_iter = first_loop_iter
