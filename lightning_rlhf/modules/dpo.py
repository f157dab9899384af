"""DPOModule: direct preference optimisation of the policy on preference pairs, no reward model.

Each training step, for a batch of B pairs:

    chosen + rejected (2B rows) ─ policy forward ─ log π(y|x), summed over response tokens
                                ─ reference      ─ log πref(y|x): cached per row, computed once
                                ─ dpo_loss (sigmoid, IPO, label-smoothed) ─ backward

The reference is frozen, so its log-prob of a pair never changes: it is computed the first time
the pair is seen and kept, keyed by the pair's position in its data set (``batch.index``). After
the first epoch a step costs one forward and backward of the policy and no reference forward.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_rlhf.lora import adapters_off
from lightning_rlhf.losses import check_dpo_options, dpo_loss, token_logprobs
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.modules.sft import completion_logits
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import RewardFunction
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions
from lightning_rlhf.types import LMBatch, PreferenceBatch, PromptBatch

_METRICS = (
    "loss",
    "accuracy",
    "policy_accuracy",
    "chosen_reward",
    "rejected_reward",
    "margin",
    "chosen_logratio",
    "rejected_logratio",
)


def dpo_adamw(params) -> torch.optim.Optimizer:
    """AdamW, lr 2e-4: preference optimisation takes small steps from the SFT policy."""
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class RowCache:
    """Per-row values of a fixed data set, kept as they are first computed.

    ``values`` is (N, 2) float32, NaN in rows not yet seen; it grows to the largest index asked.
    """

    def __init__(self) -> None:
        self.values: Tensor | None = None

    def _grow(self, index: Tensor) -> None:
        size, have = int(index.max()) + 1, 0 if self.values is None else len(self.values)
        if size <= have:
            return
        grown = torch.full((max(size, 2 * have), 2), float("nan"), device=index.device)
        if self.values is not None:
            grown[: len(self.values)] = self.values
        self.values = grown

    def get(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(values (B, 2), missing (B,) bool) of the rows ``index`` (B,)."""
        self._grow(index)
        values = self.values[index]
        return values, values.isnan().any(dim=-1)

    def put(self, index: Tensor, values: Tensor) -> None:
        """Store ``values`` (B, 2) at the rows ``index`` (B,)."""
        self._grow(index)
        self.values[index] = values.detach().float()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class DPOModule(PolicyModule):
    """Direct preference optimisation (Rafailov et al. 2023) and its IPO and conservative variants.

    The policy learns from (prompt, chosen, rejected) pairs directly: the loss raises
    β·(log π(y_w|x) − log πref(y_w|x)) − β·(log π(y_l|x) − log πref(y_l|x)), the margin of the
    implicit rewards, with no reward model and no sampling. Sequence log-probs are sums over the
    response tokens; chosen and rejected go through one forward.

    Logged at train and validation: ``loss``, ``accuracy`` (implicit reward of chosen > rejected),
    ``policy_accuracy`` (log π(y_w|x) > log π(y_l|x): the policy itself prefers the chosen
    response), ``chosen_reward`` and ``rejected_reward`` (implicit rewards), ``margin``,
    ``chosen_logratio`` and ``rejected_logratio`` (mean log π − log πref on each side's
    responses: proxies of the KL to the reference), and at validation the oracle score of greedy
    answers to the prompts of the data module's second validation loader
    (``data.num_val_prompts``).

    Args:
        model_name_or_path: the initial policy (the SFT export, or any causal LM).
        ref_model_name_or_path: the reference policy πref, a frozen copy; None uses the initial
            policy. With a LoRA policy and None, πref is the same model with its adapters disabled
            (no copy).
        beta: β, the strength of the pull toward πref (and IPO's target margin 1 / (2β)).
        loss_type: "sigmoid" (DPO) or "ipo" (IPO, Azar et al. 2023: (h − 1/(2β))² of the
            log-ratio difference h).
        label_smoothing: ε in [0, 0.5), the assumed rate of flipped preference labels
            (conservative DPO: −(1−ε)·log σ(βh) − ε·log σ(−βh)); "sigmoid" only.
        average_logprobs: a response's log-prob is the mean of its tokens' rather than their
            sum (both policy and πref), so h no longer grows with the responses' length; TRL's
            IPO reads it so (use it with "ipo" to match TRL's numbers; the target margin
            1/(2β) is then per token). False: the summed log-probs of DPO's and IPO's papers.
        cache_ref_logprobs: compute πref's log-probs of a pair the first time it is seen and
            keep them for the rest of the fit (keyed by the pair's position in its data set, so
            shuffling, resuming and data-parallel ranks all read the right row; training and
            validation pairs apart); False recomputes them at every step.
        model: loading options of the policy (dtype, attention, checkpointing, LoRA, remote code).
        optimizer: optimiser factory, given the trainable parameters.
        schedule: learning-rate warm-up and decay.
        oracle: scores greedy answers to held-out prompts at validation (the bundled
            ``TaskOracle``); None skips the score.
        eval_sampling: how validation answers are generated (temperature 0 is greedy).
        num_logged_samples: held-out prompts and answers logged as a table at each validation.
        nan_policy: a non-finite loss stops the run ("raise", naming the step) or skips that
            batch with a warning ("skip"; under DDP every rank skips it together).
        max_consecutive_skips: under ``nan_policy: skip``, this many batches skipped in a row
            stop the run with an error naming what was non-finite and how often.
        rollout: the engine that samples the validation answers: ``HFRollout`` (None, the
            default) or ``PagedRollout``, by class_path (docs/rollout.md).
    """

    def __init__(
        self,
        model_name_or_path: str = "artifacts/sft",
        ref_model_name_or_path: str | None = None,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
        label_smoothing: float = 0.0,
        average_logprobs: bool = False,
        cache_ref_logprobs: bool = True,
        model: ModelOptions = ModelOptions(),
        optimizer: OptimizerCallable = dpo_adamw,
        schedule: ScheduleOptions = ScheduleOptions(warmup_steps=20),
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
        check_dpo_options(beta, loss_type, label_smoothing)
        self.save_hyperparameters(ignore=["optimizer", "oracle", "rollout"])
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        self.ref_model_name_or_path = ref_model_name_or_path
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.average_logprobs = average_logprobs
        self.cache_ref_logprobs = cache_ref_logprobs
        self._ref: list[nn.Module] = []  # a list: the frozen reference is neither trained nor saved
        self._ref_cache = {"train": RowCache(), "val": RowCache()}
        self.val_metrics = nn.ModuleDict({k: MeanMetric() for k in _METRICS})
        self.last_metrics: dict[str, float] = {}

    # ----------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self._ref = self.load_reference(self.ref_model_name_or_path)

    def on_fit_start(self) -> None:
        for ref in self._ref:
            ref.to(self.device)
        self._ref_cache = {"train": RowCache(), "val": RowCache()}  # this fit's data sets

    def on_validation_start(self) -> None:
        for ref in self._ref:
            ref.to(self.device)
        if self.trainer.state.fn != TrainerFn.FITTING:  # another validate() may bring other pairs
            self._ref_cache["val"] = RowCache()

    # ----------------------------------------------------------------------------- log-probs
    @staticmethod
    def _logps(
        model: nn.Module,
        ids: Tensor,
        mask: Tensor,
        response_mask: Tensor,
        response_index: Tensor | None = None,
    ) -> Tensor:
        """(rows,) summed log-prob of each right-padded row's response tokens (as
        :func:`sequence_logprobs`), with the LM head run on the positions that predict a
        response token only: prompt and pad positions cost the trunk, not the vocabulary.
        ``response_index``: those positions as the collator found them (None: found here)."""
        labels = ids.masked_fill(response_mask == 0, -100)  # (rows, T)
        batch = LMBatch(ids, mask, labels, loss_index=response_index)
        logits, targets, index = completion_logits(model, batch)
        per_token = token_logprobs(logits, targets)[0]  # (N,)
        rows = index // ids.shape[1]  # (N,) the row of each kept position
        return per_token.new_zeros(len(ids)).index_add(0, rows, per_token)

    @torch.no_grad()
    def _ref_logps(
        self, ids: Tensor, mask: Tensor, response_mask: Tensor, index: Tensor | None = None
    ) -> Tensor:
        if self._ref:
            return self._logps(self._ref[0], ids, mask, response_mask, index)
        with adapters_off(self.model), _eval_mode(self.model):  # LoRA: πref is the base
            return self._logps(self.model, ids, mask, response_mask, index)

    def reference_logps(self, batch: PreferenceBatch, stage: str = "train") -> Tensor:
        """(2B,) log πref of each row's response: from the cache, computing the missing pairs."""
        tensors = (batch.input_ids, batch.attention_mask, batch.response_mask)
        if not self.cache_ref_logprobs or batch.index is None:
            return self._ref_logps(*tensors, batch.response_index)
        cache = self._ref_cache[stage]
        values, missing = cache.get(batch.index)  # (B, 2), (B,)
        if missing.any():
            pairs = missing.nonzero().squeeze(1)  # (b,)
            rows = torch.cat([pairs, pairs + len(batch.index)])  # their chosen, then rejected rows
            computed = self._ref_logps(*(t[rows] for t in tensors))  # (2b,)
            cache.put(batch.index[pairs], computed.view(2, -1).T)
            values, _ = cache.get(batch.index)
        return values.T.reshape(-1)  # (2B,): chosen, then rejected

    # ----------------------------------------------------------------------------- steps
    def _step(self, batch: PreferenceBatch, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.response_mask is None:
            raise ValueError(
                "DPO needs each row's response tokens (batch.response_mask): use "
                "PreferenceDataModule, whose collator marks them"
            )
        policy = self._logps(
            self.model,
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            batch.response_index,
        )
        ref = self.reference_logps(batch, stage)  # (2B,), summed as the cache keeps them
        if self.average_logprobs:  # over the tokens _logps sums: those after position 0
            lengths = batch.response_mask[:, 1:].sum(1).clamp(min=1).to(policy.dtype)  # (2B,)
            policy, ref = policy / lengths, ref / lengths
        chosen, rejected = policy.chunk(2)  # (B,), (B,)
        ref_chosen, ref_rejected = ref.chunk(2)
        loss, stats = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
            self.label_smoothing,
        )  # fmt: skip
        stats["loss"] = stats.pop("dpo_loss")
        stats["policy_accuracy"] = (chosen > rejected).float().mean().detach()
        return loss, stats

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> Tensor | None:
        loss, stats = self._step(batch, "train")
        if not self.check_loss(loss):
            return None  # Lightning skips the backward pass and the optimizer step
        self.log("train/loss", stats.pop("loss"), prog_bar=True)
        self.log_stats({f"train/{k}": v for k, v in stats.items()})
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, PromptBatch):  # the data module's second loader: held-out prompts
            self.score_generations(batch)
            return
        _, stats = self._step(batch, "val")
        for key, value in stats.items():
            self.val_metrics[key].update(value, weight=len(batch.prompts))

    def on_validation_epoch_end(self) -> None:
        computed = {}
        for key, metric in self.val_metrics.items():
            if metric.update_count:
                computed[key] = metric.compute()
                self.log(f"val/{key}", computed[key], prog_bar=key == "policy_accuracy")
            metric.reset()
        if self.val_oracle.update_count:
            computed["oracle_score"] = self.val_oracle.compute()
        if computed:
            self.last_metrics = {f"val/{k}": float(v) for k, v in computed.items()}
            self.last_metrics["step"] = self.global_step
        self.log_generation_scores()

    def export_extras(self) -> dict[str, dict]:
        """dpo_stats.json: the last validation's metrics (accuracies, rewards, oracle score)."""
        return {"dpo_stats.json": self.last_metrics} if self.last_metrics else {}
