"""Our SFT stage as users run it: SFTModule + SFTDataModule under a Lightning Trainer.

Logging and checkpointing are off (a logger would write files); everything else is the stage's own
code path: data module encoding and collation (padding or packing), the module's loss, Lightning's
optimisation loop with gradient clipping at 1.0.
"""

from __future__ import annotations

from common import CONFIG, baseline, matmul_params, result
from lit import StepCallback, adamw, trainer

from lightning_rlhf.data.sft import SFTDataModule
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.sft import SFTModule
from lightning_rlhf.optim import ScheduleOptions

baseline()
cfg = CONFIG
module = SFTModule(
    model_name_or_path=cfg["model_dir"],
    model=ModelOptions(dtype="float32", attn_implementation="sdpa"),
    optimizer=adamw,
    schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
    oracle=None,
)
data = SFTDataModule(
    train_path=cfg["data"],
    val_path=None,
    val_fraction=0.0,
    tokenizer=cfg["model_dir"],
    max_length=cfg["max_length"],
    packing=cfg.get("packing", False),
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
