"""RunProgressBar counts the run's optimizer steps to max_steps across epochs; ValidateAtStart
logs a validation at step 0 and not again on resume."""

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_rlhf.callbacks.progress import RunProgressBar, ValidateAtStart


class Regression(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)  # 3 batches


def fit(tmp_path, callbacks, max_steps=7, ckpt_path=None):
    trainer = Trainer(
        max_steps=max_steps,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="csv", version=0),
        callbacks=callbacks,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Regression(), loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def val_steps(tmp_path):
    import csv

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows if r.get("val/loss")]


def test_validation_runs_at_step_zero_then_at_its_interval(tmp_path):
    fit(tmp_path, [ValidateAtStart()])
    assert val_steps(tmp_path) == [0, 2, 5]  # logged at global_step: 0, then after 3 and 6 batches


def test_without_the_callback_the_first_validation_is_at_its_interval(tmp_path):
    fit(tmp_path, [])
    assert val_steps(tmp_path) == [2, 5]


def test_resumed_run_does_not_validate_again_at_its_start(tmp_path):
    first = fit(tmp_path / "a", [ValidateAtStart()], max_steps=4)
    ckpt = tmp_path / "a.ckpt"
    first.save_checkpoint(ckpt)
    fit(tmp_path / "b", [ValidateAtStart()], max_steps=7, ckpt_path=ckpt)
    assert 0 not in val_steps(tmp_path / "b")


def test_step_bar_spans_epochs_with_max_steps_as_total(tmp_path):
    bar = RunProgressBar()
    trainer = fit(tmp_path, [bar])
    assert trainer.current_epoch >= 2  # 7 steps of 3-batch epochs: the bar outlived two epochs
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed) == (7, 7)
    assert "step" in str(task.description) and "/" not in str(task.description)
