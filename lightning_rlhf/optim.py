"""Learning-rate schedules shared by every stage: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class ScheduleOptions:
    """Learning-rate schedule.

    Attributes:
        warmup_steps: optimizer steps of linear warm-up from 0 to the optimizer's lr.
        decay: shape after warm-up, down to ``min_lr_ratio`` × lr at the last step.
        min_lr_ratio: final lr as a fraction of the peak.
    """

    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_factor(step: int, total_steps: int, options: ScheduleOptions) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    if options.decay == "constant":
        return 1.0
    span = max(1, total_steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if options.decay == "cosine" else 1 - progress
    return options.min_lr_ratio + (1 - options.min_lr_ratio) * shape


def build_scheduler(optimizer: Optimizer, options: ScheduleOptions, total_steps: int) -> dict:
    """The Lightning ``lr_scheduler`` dict, stepped every optimizer step."""
    scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, options))
    return {"scheduler": scheduler, "interval": "step"}
