"""Sample tables: a W&B table when the logger is W&B, a JSONL file beside the logs otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from lightning import Trainer


def log_samples(trainer: Trainer, key: str, columns: list[str], rows: list[list]) -> None:
    if not trainer.is_global_zero or not rows:
        return
    step = trainer.global_step
    for logger in trainer.loggers:
        if hasattr(logger, "log_table"):  # WandbLogger
            logger.log_table(key=key, columns=columns, data=rows, step=step)
            continue
        log_dir = Path(logger.log_dir or logger.save_dir or ".") / "samples"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{key.replace('/', '_')}.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **dict(zip(columns, row))}) + "\n")


def log_histogram(trainer: Trainer, key: str, values) -> None:
    """A W&B histogram of ``values`` (other loggers get the summary statistics only)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if hasattr(logger, "log_table"):  # WandbLogger
            import wandb

            logger.experiment.log(
                {key: wandb.Histogram(values.detach().cpu().numpy())}, commit=False
            )
