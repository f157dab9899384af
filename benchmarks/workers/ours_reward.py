"""Our reward stage as users run it: RewardModule + PreferenceDataModule under a Lightning Trainer.

Chosen and rejected go through one forward (the module's own path), padded or, with
``padding_free``, packed; logging and checkpointing off, gradient clipping at 1.0, no reward
centering.
"""

from __future__ import annotations

from common import CONFIG, baseline, matmul_params, result
from lit import StepCallback, adamw, trainer

from lightning_rlhf.data.preference import PreferenceDataModule
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.optim import ScheduleOptions

baseline()
cfg = CONFIG
module = RewardModule(
    model_name_or_path=cfg["model_dir"],
    model=ModelOptions(dtype="float32", attn_implementation="sdpa"),
    optimizer=adamw,
    schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
    center_coef=0.0,
    oracle=None,
    padding_free=cfg.get("padding_free", False),
)
data = PreferenceDataModule(
    train_path=cfg["data"],
    val_path=None,
    val_fraction=0.0,
    tokenizer=cfg["model_dir"],
    max_length=cfg["max_length"],
    batch_size=cfg["batch_size"],
    pad_to_multiple_of=cfg.get("pad_to_multiple_of", 1),
    seed=cfg["seed"],
)
steps = StepCallback()
trainer([steps], cfg["warmup"] + cfg["steps"]).fit(module, datamodule=data)
result(
    steps.clock,
    tokens_per_step=steps.counter.per_step,
    rows_per_step=cfg["batch_size"],
    matmul_params=matmul_params(module.model),
)
