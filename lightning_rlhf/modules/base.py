"""What every stage shares: model and tokenizer loading, optimiser and schedule, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from lightning_rlhf.models import ModelOptions, export_hf, load_tokenizer
from lightning_rlhf.optim import ScheduleOptions, build_scheduler


def adamw(params) -> torch.optim.Optimizer:
    """The default optimiser: AdamW, lr 2e-3, no weight decay (sized for the embedded model)."""
    return torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)


class StageModule(LightningModule):
    """Base of the stage modules. Subclasses implement ``load_model`` and the steps."""

    def __init__(
        self,
        model_name_or_path: str,
        model: ModelOptions,
        optimizer: OptimizerCallable,
        schedule: ScheduleOptions,
    ) -> None:
        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.model_options = model
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.tokenizer = load_tokenizer(model_name_or_path, model.trust_remote_code)
        self.model: Any = None

    def load_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def configure_model(self) -> None:
        # called by the Trainer before optimisers and checkpoint restore; loads once
        if self.model is None:
            self.model = self.load_model()
            self.model.train()  # from_pretrained returns eval mode; Lightning toggles from here

    def configure_optimizers(self):
        return self._optimizers_for([p for p in self.model.parameters() if p.requires_grad])

    def _optimizers_for(self, params: list[torch.nn.Parameter]) -> dict:
        optimizer = self.optimizer_factory(params)
        total = self.total_optimizer_steps()
        return {
            "optimizer": optimizer,
            "lr_scheduler": build_scheduler(optimizer, self.schedule, total),
        }

    def total_optimizer_steps(self) -> int:
        """Length of the learning-rate schedule."""
        return int(self.trainer.estimated_stepping_batches)

    def export_extras(self) -> dict[str, dict]:
        """Further JSON files written beside the exported weights."""
        return {}

    def export(self, out_dir: str | Path) -> Path:
        lora = self.model_options.lora
        merge = lora is None or lora.merge_on_export
        return export_hf(
            self.model, self.tokenizer, out_dir, merge_lora=merge, extra_json=self.export_extras()
        )
