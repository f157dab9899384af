"""SFTModule: next-token loss on completion tokens of prompt -> demonstration pairs."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from lightning_rlhf.losses import completion_nll
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.base import adamw
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import RewardFunction
from lightning_rlhf.rollout import SamplingOptions
from lightning_rlhf.types import LMBatch


class SFTModule(PolicyModule):
    """Supervised fine-tuning: the initial policy and reference policy of the RL stage.

    Args:
        model_name_or_path: hub name or local directory of the pretrained causal LM.
        model: loading options (dtype, attention, gradient checkpointing, LoRA, remote code).
        optimizer: optimiser factory, given the trainable parameters.
        schedule: learning-rate warm-up and decay.
        oracle: scores generated responses to held-out prompts at validation (the bundled task's
            ``TaskOracle``, or any RewardFunction); None skips the score.
        eval_sampling: how validation responses are generated (temperature 0 is greedy).
        num_logged_samples: prompts, responses and scores logged as a table at each validation.
    """

    def __init__(
        self,
        model_name_or_path: str = "artifacts/tiny-base",
        model: ModelOptions = ModelOptions(),
        optimizer: OptimizerCallable = adamw,
        schedule: ScheduleOptions = ScheduleOptions(),
        oracle: RewardFunction | None = None,
        eval_sampling: SamplingOptions = SamplingOptions(max_new_tokens=8, temperature=0.0),
        num_logged_samples: int = 8,
    ) -> None:
        super().__init__(
            model_name_or_path,
            model,
            optimizer,
            schedule,
            oracle,
            eval_sampling,
            num_logged_samples,
        )
        self.save_hyperparameters(ignore=["optimizer", "oracle"])
        self.val_nll = MeanMetric()
        self.val_token_accuracy = MeanMetric()

    def _loss(self, batch: LMBatch):
        logits = self.model(
            input_ids=batch.input_ids,
            attention_mask=None if batch.position_ids is not None else batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,  # with a cache, transformers ignores packed position ids
        ).logits
        # logits at t predict the token at t + 1
        return completion_nll(logits[:, :-1], batch.labels[:, 1:])

    def training_step(self, batch: LMBatch, batch_idx: int) -> torch.Tensor:
        loss, stats = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/token_accuracy", stats["token_accuracy"])
        self.log("train/tokens", stats["tokens"], reduce_fx="sum")
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            _, stats = self._loss(batch)
            self.val_nll.update(stats["nll"], weight=stats["tokens"])
            self.val_token_accuracy.update(stats["token_accuracy"], weight=stats["tokens"])
            return
        self.score_generations(batch)

    def on_validation_epoch_end(self) -> None:
        if self.val_nll.update_count:
            nll = self.val_nll.compute()
            self.log_dict({"val/loss": nll, "val/perplexity": nll.exp()}, prog_bar=True)
            self.log("val/token_accuracy", self.val_token_accuracy.compute())
        for metric in (self.val_nll, self.val_token_accuracy):
            metric.reset()
        self.log_generation_scores()
