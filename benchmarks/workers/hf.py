"""TRL's side's shared pieces: a transformers callback that marks step ends and counts tokens (and
one that closes PPO/GRPO iterations), the settings every TRL config shares with ours, and the SFT
and reward workers' training run."""

from __future__ import annotations

import tempfile
from typing import Any

import datasets
from common import PPOProbe, StepClock, TokenCounter, device, training
from transformers import TrainerCallback


class StepCallback(TrainerCallback):
    """Marks the end of each optimizer step (``on_step_end``); the token counter is reset with it."""

    def __init__(self, device: str, counter: TokenCounter | None = None) -> None:
        self.device = device
        self.counter = counter
        self.clock = StepClock(device)

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock = StepClock(self.device)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.mark()
        if self.counter is not None:
            self.counter.step()


class Iterations(StepCallback):
    """Step ends that also close the probe's PPO iterations."""

    def __init__(self, device: str, probe: PPOProbe) -> None:
        super().__init__(device)
        self.probe = probe

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.probe.start()

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.probe.end_iteration()


def shared(cfg: dict[str, Any], prefix: str = "trl-") -> dict[str, Any]:
    """The settings of every TRL config (PPO's too), pinned against TRL's defaults: fp32
    (``bf16=False``) unless the case asks for ``bf16-mixed`` (autocast), gradient checkpointing
    off, torch AdamW (fused unless the case says ``fused: false``) without weight decay at a
    constant learning rate, the case's batch size and seed, no checkpoints or reports."""
    return {
        "output_dir": tempfile.mkdtemp(prefix=prefix),
        "per_device_train_batch_size": cfg["batch_size"],
        "learning_rate": cfg["lr"],
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "optim": "adamw_torch_fused" if cfg.get("fused", True) else "adamw_torch",
        "bf16": cfg.get("precision") == "bf16-mixed",
        "fp16": False,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": device(cfg) == "cpu",
        "seed": cfg["seed"],
        "disable_tqdm": True,
    }


def pinned(cfg: dict[str, Any], config_cls, **kwargs):
    """An SFT or reward config: :func:`shared`, ``warmup + steps`` steps without warm-up of the
    learning rate, clipping at 1.0, no evaluation, no data loader workers, the case's padding."""
    if cfg.get("pad_to_multiple_of"):
        kwargs.setdefault("pad_to_multiple_of", cfg["pad_to_multiple_of"])
    return config_cls(
        **shared(cfg),
        max_steps=cfg["warmup"] + cfg["steps"],
        warmup_steps=0,
        max_grad_norm=1.0,
        eval_strategy="no",
        dataloader_num_workers=0,
        **kwargs,
    )


def fit(cfg: dict[str, Any], trainer_cls, model, tokenizer, args) -> dict[str, Any]:
    """SFT and reward: TRL's trainer on the case's data with ``args``, measured."""
    train = datasets.load_dataset("json", data_files=cfg["data"], split="train")
    counter = TokenCounter(model, tokenizer.pad_token_id)
    steps = StepCallback(device(cfg), counter)
    trainer_cls(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[steps]
    ).train()
    return training(cfg, steps.clock, model, counter)
