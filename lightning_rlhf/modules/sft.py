"""SFTModule: next-token loss on completion tokens of prompt -> demonstration pairs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from lightning_rlhf.data.collate import loss_positions
from lightning_rlhf.losses import completion_nll
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.base import adamw
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.packing import causal_lm_forward, check_packing
from lightning_rlhf.rewards import RewardFunction
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions
from lightning_rlhf.types import LMBatch


def completion_logits(
    model: torch.nn.Module, batch: LMBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the N positions whose next token is learned, (1, N, V), those tokens, (1, N),
    and the positions, (N,) flat indices ``b * T + t`` into the (B, T) batch, row-major.

    The LM head runs on those positions only: prompt and pad positions cost the trunk but not the
    vocabulary projection (half the head's FLOPs when prompts are as long as completions). A
    forward pre-hook hands the head the selected hidden states, so the model's own code still
    applies whatever it does after the head (logit scaling, soft-capping).
    """
    targets = F.pad(batch.labels[:, 1:], (0, 1), value=-100)  # (B, T): t predicts token t + 1
    # an index, not a boolean mask: the collator's, found on the host, or found here with one
    # read of N from the device (boolean indexing would read it again for the targets and in the
    # backward pass)
    index = batch.loss_index if batch.loss_index is not None else loss_positions(batch.labels)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (1, N, ...)
        return x.flatten(0, 1).index_select(0, index).unsqueeze(0)

    def select(head, args):
        hidden = args[0]  # (B, T, H) from a model that runs its head on every position
        return (gather(hidden), *args[1:]) if hidden.shape[:2] == targets.shape else None

    handle = model.get_output_embeddings().register_forward_pre_hook(select)
    try:
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=None if batch.position_ids is not None else batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,  # with a cache, transformers ignores packed position ids
        ).logits
    finally:
        handle.remove()
    if logits.shape[:2] == targets.shape:  # the head did not see (B, T) states: select after it
        logits = gather(logits)
    return logits, targets.reshape(-1)[index].unsqueeze(0), index


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
        nan_policy: a non-finite loss stops the run ("raise", naming the step) or skips that
            batch with a warning ("skip"; under DDP every rank skips it together).
        max_consecutive_skips: under ``nan_policy: skip``, this many batches skipped in a row
            stop the run with an error naming what was non-finite and how often.
        rollout: the engine that samples the validation answers: ``HFRollout`` (None, the
            default) or ``PagedRollout``, by class_path (docs/rollout.md).
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
        nan_policy: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 10,
        rollout: RolloutEngine | None = None,
    ) -> None:
        super().__init__(
            model_name_or_path,
            model,
            optimizer,
            schedule,
            oracle,
            eval_sampling,
            num_logged_samples,
            rollout,
        )
        self.save_hyperparameters(ignore=["optimizer", "oracle", "rollout"])
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        self.val_nll = MeanMetric()
        self.val_token_accuracy = MeanMetric()
        self._packing_checked = False

    def _loss(self, batch: LMBatch):
        logits, targets, _ = completion_logits(self.model, batch)  # (1, N, V), (1, N)
        return completion_nll(logits, targets)

    def training_step(self, batch: LMBatch, batch_idx: int) -> torch.Tensor | None:
        if batch.position_ids is not None and not self._packing_checked:
            # packed rows (data.packing): refuse an architecture that lets them attend across
            check_packing(self.model, causal_lm_forward(self.model), "data.packing")
            self._packing_checked = True
        loss, stats = self._loss(batch)
        if not self.check_loss(loss):
            return None  # Lightning skips the backward pass and the optimizer step
        self.log("train/loss", loss, prog_bar=True)
        self.log_stats(
            {"train/token_accuracy": stats["token_accuracy"], "train/tokens": stats["tokens"]}
        )
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
