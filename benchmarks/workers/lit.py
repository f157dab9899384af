"""Our side's shared pieces: a Lightning callback that marks step ends and counts tokens, the
settings every one of our modules and data modules shares, and the Trainer every one of our
workers runs (one CPU or GPU, no logger, no checkpoints, no validation)."""

from __future__ import annotations

from typing import Any

import torch
from common import PPOProbe, StepClock, TokenCounter, device, training
from lightning import Callback, LightningDataModule, LightningModule, Trainer

from lightning_rlhf.models import ModelOptions
from lightning_rlhf.optim import ScheduleOptions


class StepCallback(Callback):
    """Marks the end of each training batch; counts the training tokens of ``pl_module.model``."""

    def __init__(self, device: str, probe: PPOProbe | None = None) -> None:
        self.device = device
        self.clock = StepClock(device)
        self.counter: TokenCounter | None = None
        self.probe = probe

    def on_train_start(self, trainer, pl_module) -> None:
        self.counter = TokenCounter(pl_module.model, pl_module.tokenizer.pad_token_id)
        if self.probe is not None:
            self.probe.watch_update(pl_module.model)
            self.probe.watch_optimizer(trainer.optimizers[0])
            self.probe.start()
        self.clock = StepClock(self.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.mark()
        self.counter.step()
        if self.probe is not None:
            self.probe.end_iteration()


def adamw(cfg: dict[str, Any]):
    """The optimiser factory every side's optimiser matches: torch AdamW at the benchmark's lr, no
    weight decay, with the fused kernel (TRL's default, ``adamw_torch_fused``, since torch 2.8)
    unless the case turns it off (``fused: false``; our stages clip gradients themselves, so a
    fused optimiser also works under ``bf16-mixed``)."""
    fused = cfg.get("fused", True)

    def make(params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0, fused=fused)

    return make


def module_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What every one of our modules gets: fp32 weights, SDPA attention, :func:`adamw` at a
    constant learning rate."""
    return {
        "model_name_or_path": cfg["model_dir"],
        "model": ModelOptions(dtype="float32", attn_implementation="sdpa"),
        "optimizer": adamw(cfg),
        "schedule": ScheduleOptions(warmup_steps=0, decay="constant"),
    }


def data_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What every one of our data modules gets: the case's file, no validation, the model's
    tokenizer, the case's batch size and seed."""
    return {
        "train_path": cfg["data"],
        "val_path": None,
        "val_fraction": 0.0,
        "tokenizer": cfg["model_dir"],
        "batch_size": cfg["batch_size"],
        "seed": cfg["seed"],
    }


def trainer(
    cfg: dict[str, Any],
    callbacks: list[Callback],
    max_steps: int,
    clip: float | None = 1.0,
    **extra,
) -> Trainer:
    return Trainer(
        accelerator="gpu" if device(cfg) == "cuda" else "cpu",
        devices=1,
        precision=cfg.get("precision", "32-true"),
        max_steps=max_steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **extra,
    )


def fit(cfg: dict[str, Any], module: LightningModule, data: LightningDataModule) -> dict[str, Any]:
    """SFT and reward: ``warmup + steps`` training steps with clipping at 1.0, measured."""
    steps = StepCallback(device(cfg))
    trainer(cfg, [steps], cfg["warmup"] + cfg["steps"]).fit(module, datamodule=data)
    return training(cfg, steps.clock, module.model, steps.counter)
