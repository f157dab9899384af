"""Our side's shared pieces: a Lightning callback that marks step ends and counts tokens, and the
Trainer every one of our workers runs (one CPU or GPU, no logger, no checkpoints, no validation)."""

from __future__ import annotations

import torch
from common import CONFIG, DEVICE, PPOProbe, StepClock, TokenCounter
from lightning import Callback, Trainer


class StepCallback(Callback):
    """Marks the end of each training batch; counts the training tokens of ``pl_module.model``."""

    def __init__(self, probe: PPOProbe | None = None) -> None:
        self.clock = StepClock()
        self.counter: TokenCounter | None = None
        self.probe = probe

    def on_train_start(self, trainer, pl_module) -> None:
        self.counter = TokenCounter(pl_module.model, pl_module.tokenizer.pad_token_id)
        if self.probe is not None:
            self.probe.watch_update(pl_module.model)
            self.probe.watch_optimizer(trainer.optimizers[0])
            self.probe.end_iteration()  # discard the set-up before the first iteration
            self.probe.iterations.clear()
        self.clock = StepClock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.mark()
        self.counter.step()
        if self.probe is not None:
            self.probe.end_iteration()


def adamw(params) -> torch.optim.Optimizer:
    """torch AdamW at the benchmark's lr, no weight decay: the optimiser every side uses, with the
    fused kernel (TRL's default, ``adamw_torch_fused``, since torch 2.8) unless the case turns it
    off (``fused: false``; our stages clip gradients themselves, so a fused optimiser also works under
    ``bf16-mixed``)."""
    fused = CONFIG.get("fused", True)
    return torch.optim.AdamW(params, lr=CONFIG["lr"], weight_decay=0.0, fused=fused)


def trainer(
    callbacks: list[Callback], max_steps: int, clip: float | None = 1.0, **extra
) -> Trainer:
    return Trainer(
        accelerator="gpu" if DEVICE == "cuda" else "cpu",
        devices=1,
        precision=CONFIG.get("precision", "32-true"),
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
