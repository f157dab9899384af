"""TRL's side's shared piece: a transformers callback that marks step ends and counts tokens."""

from __future__ import annotations

from common import StepClock, TokenCounter
from transformers import TrainerCallback


class StepCallback(TrainerCallback):
    """Marks the end of each optimizer step (``on_step_end``); the token counter is reset with it."""

    def __init__(self, counter: TokenCounter | None = None) -> None:
        self.counter = counter
        self.clock = StepClock()

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock = StepClock()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.mark()
        if self.counter is not None:
            self.counter.step()


def pinned(config_cls, **kwargs):
    """A TRL config with the settings both sides share pinned against TRL's defaults: fp32
    (``bf16=False``) unless the case asks for ``bf16-mixed`` (autocast), gradient checkpointing
    off, torch AdamW (fused unless the case says ``fused: false``) without weight decay at a
    constant learning rate, clipping at 1.0, no evaluation, checkpoints or reports."""
    import tempfile

    from common import CONFIG, DEVICE

    if CONFIG.get("pad_to_multiple_of"):
        kwargs.setdefault("pad_to_multiple_of", CONFIG["pad_to_multiple_of"])
    return config_cls(
        output_dir=tempfile.mkdtemp(prefix="trl-"),
        max_steps=CONFIG["warmup"] + CONFIG["steps"],
        per_device_train_batch_size=CONFIG["batch_size"],
        learning_rate=CONFIG["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch_fused" if CONFIG.get("fused", True) else "adamw_torch",
        max_grad_norm=1.0,
        bf16=CONFIG.get("precision") == "bf16-mixed",
        fp16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=DEVICE == "cpu",
        dataloader_num_workers=0,
        seed=CONFIG["seed"],
        disable_tqdm=True,
        **kwargs,
    )
