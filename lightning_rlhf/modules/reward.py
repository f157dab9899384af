"""RewardModule: the LM with a scalar head, trained on preference pairs with the Bradley–Terry loss."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import CatMetric, MeanMetric

from lightning_rlhf.data.collate import best_fit_decreasing
from lightning_rlhf.losses import bradley_terry_loss
from lightning_rlhf.model_outputs import sequence_scores, token_scalars
from lightning_rlhf.models import ModelOptions, load_scalar_model
from lightning_rlhf.modules.base import StageModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.packing import check_packing
from lightning_rlhf.reward_stats import check_reward_stats
from lightning_rlhf.rewards import RewardFunction, as_reward
from lightning_rlhf.types import PreferenceBatch


def reward_adamw(params) -> torch.optim.Optimizer:
    """AdamW, lr 5e-4: a reward model starts from a trained LM and needs a gentler step than SFT."""
    return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Best-fit-decreasing rows of 1, 1.5 or 2 times ``width`` tokens: whichever leaves the fewest
    slots (rows × longest row). Wider rows cost attention FLOPs, small beside the MLP's at short
    widths, and fit long and short sequences together."""
    options = [best_fit_decreasing(lengths, int(width * k)) for k in (1, 1.5, 2)]
    return min(options, key=lambda rows: len(rows) * max(sum(lengths[i] for i in r) for r in rows))


def packed_sequence_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """(N,) reward of each sequence, as ``sequence_scores``, computed without padding.

    The N sequences' real tokens are packed into rows (:func:`pack_rows`), with position ids
    restarting at each sequence, which transformers reads as block-diagonal attention: each
    sequence sees only itself, and padding costs (almost) no compute.

    Args:
        input_ids: (N, T) padded on either side.
        attention_mask: (N, T) 1 on real tokens.
        pad_id: token filling the end of each packed row (each pad attends only to itself).
    """
    device = input_ids.device
    # the packing is host work: one copy of the batch to the host, then one of the rows back
    # (on a GPU, slicing the device tensors would read each sequence's length there)
    input_ids, real = input_ids.cpu(), attention_mask.cpu().bool()
    lengths = real.sum(1).tolist()
    rows = pack_rows(lengths, input_ids.shape[1])
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = input_ids.new_full((len(rows), width), pad_id)  # (R, W)
    positions = torch.zeros_like(ids)
    last = torch.empty(len(lengths), dtype=torch.long)  # flat index r * W + c of each last token
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            n = lengths[i]
            ids[r, col : col + n] = input_ids[i][real[i]]
            positions[r, col : col + n] = torch.arange(n)
            last[i] = r * width + col + n - 1
            col += n
    # no mask: packed positions
    values = token_scalars(model, ids.to(device), None, positions.to(device))  # (R, W)
    return values.flatten()[last.to(device)]


class RewardModule(StageModule):
    """Reward model r(x, y): learns to score the chosen response above the rejected one.

    Loss: mean over pairs of -log σ(r(x, y_w) − r(x, y_l) − margin), plus
    ``center_coef`` × mean((r_w + r_l)²) to keep rewards centred on zero. The score is read at the
    last real token of each sequence (its EOS), under any padding.

    Args:
        model_name_or_path: the SFT export or any base causal LM; a new scalar head is added.
        model: loading options (dtype, attention, gradient checkpointing, LoRA, remote code).
        optimizer: optimiser factory, given the trainable parameters.
        schedule: learning-rate warm-up and decay.
        center_coef: weight of the reward-centering term (0 turns it off).
        oracle: a RewardFunction (the bundled task's ``TaskOracle``) whose ranking of each pair the
            reward model's is compared with at validation; None skips the agreement metric.
        num_logged_pairs: pairs with their rewards logged as a table at each validation.
        padding_free: score each batch's sequences packed into rows (best-fit decreasing), so
            padding costs (almost) no compute: faster on variable-length pairs. Each sequence attends
            only to itself through position ids that restart at 0, which transformers honours
            for most of its models with sdpa, eager and flash attention; at the start of fit a
            probe refuses a model that does not (OPT, GPT-2), naming its type.
        nan_policy: a non-finite loss stops the run ("raise", naming the step) or skips that
            batch with a warning ("skip"; under DDP every rank skips it together).
        max_consecutive_skips: under ``nan_policy: skip``, this many batches skipped in a row
            stop the run with an error naming what was non-finite and how often.
    """

    def __init__(
        self,
        model_name_or_path: str = "artifacts/sft",
        model: ModelOptions = ModelOptions(),
        optimizer: OptimizerCallable = reward_adamw,
        schedule: ScheduleOptions = ScheduleOptions(warmup_steps=50),
        center_coef: float = 0.0,
        oracle: RewardFunction | None = None,
        num_logged_pairs: int = 8,
        padding_free: bool = False,
        nan_policy: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 10,
    ) -> None:
        super().__init__(model_name_or_path, model, optimizer, schedule)
        if center_coef < 0:
            raise ValueError(f"center_coef must be >= 0, got {center_coef}")
        self.save_hyperparameters(ignore=["optimizer", "oracle"])
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        self.center_coef = center_coef
        self.oracle = None if oracle is None else as_reward(oracle, "oracle")
        self.num_logged_pairs = num_logged_pairs
        self.padding_free = padding_free
        self.val_metrics = torch.nn.ModuleDict(
            {
                k: MeanMetric()
                for k in (
                    "accuracy",
                    "chosen_reward",
                    "rejected_reward",
                    "margin",
                    "oracle_agreement",
                )
            }
        )
        self.val_rewards = CatMetric()  # every validation reward, for the stats stored at export
        self.reward_stats: dict[str, float] = {}
        self._pairs: list[list] = []

    def load_model(self) -> torch.nn.Module:
        return load_scalar_model(
            self.model_name_or_path, self.model_options, self.tokenizer.pad_token_id
        )

    def on_fit_start(self) -> None:
        if self.padding_free:  # refuse an architecture under which packed sequences attend across
            check_packing(
                self.model,
                lambda ids, mask, positions: token_scalars(self.model, ids, mask, positions),
                "model.padding_free",
            )

    def _step(self, batch: PreferenceBatch):
        if self.padding_free:
            pad_id = self.tokenizer.pad_token_id
            scores = packed_sequence_scores(
                self.model, batch.input_ids, batch.attention_mask, pad_id
            )  # (2B,)
        else:
            scores = sequence_scores(self.model, batch.input_ids, batch.attention_mask)
        chosen, rejected = scores.chunk(2)  # (B,), (B,)
        loss, stats = bradley_terry_loss(chosen, rejected, batch.margin, self.center_coef)
        return loss, stats, chosen.detach(), rejected.detach()

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor | None:
        loss, stats, _, _ = self._step(batch)
        if not self.check_loss(loss):
            return None  # Lightning skips the backward pass and the optimizer step
        self.log("train/loss", loss, prog_bar=True)
        self.log_stats({f"train/{k}": v for k, v in stats.items() if k != "bt_loss"})
        return loss

    def _oracle_agreement(
        self, batch: PreferenceBatch, chosen: torch.Tensor, rejected: torch.Tensor
    ) -> None:
        n = len(batch.prompts)
        o = self.oracle(batch.prompts * 2, batch.responses).to(chosen.device)  # (2B,)
        o_chosen, o_rejected = o[:n], o[n:]
        decided = o_chosen != o_rejected  # the oracle ties some pairs; they say nothing
        if decided.any():
            agree = (chosen > rejected) == (o_chosen > o_rejected)
            self.val_metrics["oracle_agreement"].update(agree[decided].float())

    def validation_step(self, batch: PreferenceBatch, batch_idx: int) -> None:
        _, stats, chosen, rejected = self._step(batch)
        n = chosen.numel()
        for key, value in (
            ("accuracy", (chosen > rejected).float()),
            ("chosen_reward", chosen),
            ("rejected_reward", rejected),
            ("margin", chosen - rejected),
        ):
            self.val_metrics[key].update(value)
        self.val_rewards.update(torch.cat([chosen, rejected]))
        if self.oracle is not None:
            self._oracle_agreement(batch, chosen, rejected)
        for i in range(min(n, self.num_logged_pairs - len(self._pairs))):
            self._pairs.append(
                [
                    batch.prompts[i],
                    batch.responses[i],
                    batch.responses[n + i],
                    float(chosen[i]),
                    float(rejected[i]),
                ]
            )

    def on_validation_epoch_end(self) -> None:
        from lightning_rlhf.logs import log_histogram, log_samples

        computed = {}
        for key, metric in self.val_metrics.items():
            if metric.update_count:
                computed[key] = metric.compute()
                self.log(f"val/{key}", computed[key], prog_bar=key == "accuracy")
            metric.reset()
        if self.val_rewards.update_count:
            rewards = self.val_rewards.compute().float()
            self.reward_stats = {
                "val_accuracy": float(computed.get("accuracy", float("nan"))),
                "mean": rewards.mean().item(),
                "std": rewards.std().item(),
                "count": rewards.numel(),
            }
            log_histogram(self.trainer, "val/rewards", rewards)
        self.val_rewards.reset()
        log_samples(
            self.trainer,
            "val/pairs",
            ["prompt", "chosen", "rejected", "r_chosen", "r_rejected"],
            self._pairs,
        )
        self._pairs = []

    def export_extras(self) -> dict[str, dict]:
        """reward_stats.json: mean and std of rewards over the validation pairs, for normalisation;
        refused when the std is not positive or tiny (``rewards.check_reward_stats``)."""
        if not self.reward_stats:
            return {}
        where = f"reward_stats.json (from {self.reward_stats['count']} validation rewards)"
        fix = (
            "not exported (the checkpoints are kept): train on pairs whose responses differ, "
            "or longer"
        )
        check_reward_stats(self.reward_stats, where, fix)
        return {"reward_stats.json": self.reward_stats}

    def on_train_end(self) -> None:
        # every rank, before the export callback (rank zero alone) would refuse the statistics
        super().on_train_end()
        self.export_extras()
