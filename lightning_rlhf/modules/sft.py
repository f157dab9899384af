"""SFTModule: next-token loss on completion tokens of prompt -> demonstration pairs."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from lightning_rlhf.losses import completion_nll
from lightning_rlhf.models import ModelOptions, load_causal_lm
from lightning_rlhf.modules.base import StageModule, adamw
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import RewardFunction
from lightning_rlhf.rollout import SamplingOptions, decode_responses, generate
from lightning_rlhf.types import LMBatch, PromptBatch


class SFTModule(StageModule):
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
        super().__init__(model_name_or_path, model, optimizer, schedule)
        self.save_hyperparameters(ignore=["optimizer", "oracle"])
        self.oracle = oracle
        self.eval_sampling = eval_sampling
        self.num_logged_samples = num_logged_samples
        self.val_nll = MeanMetric()
        self.val_token_accuracy = MeanMetric()
        self.val_oracle = MeanMetric()
        self._samples: list[list] = []

    def load_model(self):
        return load_causal_lm(self.model_name_or_path, self.model_options)

    def sample(
        self, batch: PromptBatch, sampling: SamplingOptions
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(response_ids (B, R), response_mask (B, R), response texts) for a prompt batch."""
        ids, mask = generate(
            self.model,
            batch.input_ids,
            batch.attention_mask,
            sampling,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return ids, mask, decode_responses(self.tokenizer, ids, mask)

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
        _, _, responses = self.sample(batch, self.eval_sampling)
        scores = None
        if self.oracle is not None:
            scores = self.oracle(batch.prompts, responses)
            self.val_oracle.update(scores)
        if len(self._samples) < self.num_logged_samples:
            for i in range(min(len(responses), self.num_logged_samples - len(self._samples))):
                score = None if scores is None else float(scores[i])
                self._samples.append([batch.prompts[i], responses[i], score])

    def on_validation_epoch_end(self) -> None:
        from lightning_rlhf.logs import log_samples

        if self.val_nll.update_count:
            nll = self.val_nll.compute()
            self.log_dict({"val/loss": nll, "val/perplexity": nll.exp()}, prog_bar=True)
            self.log("val/token_accuracy", self.val_token_accuracy.compute())
        if self.val_oracle.update_count:
            self.log("val/oracle_score", self.val_oracle.compute(), prog_bar=True)
        for metric in (self.val_nll, self.val_token_accuracy, self.val_oracle):
            metric.reset()
        log_samples(self.trainer, "val/samples", ["prompt", "response", "score"], self._samples)
        self._samples = []
