"""What every stage shares: model and tokenizer loading, optimiser and schedule, export, the
non-finite check, and what a resumed run needs before its checkpoint is read."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric

from lightning_rlhf.hf_export import export_hf
from lightning_rlhf.io import check_writable
from lightning_rlhf.models import ModelOptions, load_tokenizer
from lightning_rlhf.optim import ScheduleOptions, build_scheduler


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def adamw(params) -> torch.optim.Optimizer:
    """The default optimiser: AdamW, lr 2e-3, no weight decay (sized for the embedded model)."""
    return torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)


def _config_types(value: Any) -> set[type]:
    """The dataclass types inside a (nested) hyperparameter value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found = {type(value)}
        for f in dataclasses.fields(value):
            found |= _config_types(getattr(value, f.name))
        return found
    if isinstance(value, dict):
        return set().union(*map(_config_types, value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*map(_config_types, value)) if value else set()
    return set()


class StageModule(LightningModule):
    """Base of the stage modules. Subclasses implement ``load_model`` and the steps.

    ``nan_policy`` ("raise" or "skip") is what ``check_finite`` does with a non-finite value,
    and ``max_consecutive_skips`` how many skips in a row end the run; a stage that offers the
    choice sets both from its own arguments (:meth:`set_nan_policy`). The weights are checked
    before every checkpoint and export: none is ever written with a NaN or Inf weight.
    """

    nan_policy: str = "raise"
    max_consecutive_skips: int = 10
    _loss_checked: bool = False  # check_finite passed the loss about to be back-propagated
    _pending_losses: list[torch.Tensor] = []  # check_loss: read with the gradients' norm

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
        self._skip_streak: Counter[str] = Counter()  # skips since the last good step, by quantity

    def set_nan_policy(self, nan_policy: str, max_consecutive_skips: int) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(
                f"max_consecutive_skips must be at least 1, got {max_consecutive_skips}"
            )
        self.nan_policy, self.max_consecutive_skips = nan_policy, max_consecutive_skips

    def load_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Before a checkpoint is read: allow this module's own option dataclasses in it.

        Checkpoints load with ``weights_only=True`` (nothing in them can run code); the options
        saved as hyperparameters are plain dataclasses of this package, allowed by name. Also
        fails early, before any step, when a checkpoint directory cannot be written.
        """
        torch.serialization.add_safe_globals(sorted(_config_types(dict(self.hparams)), key=str))
        if stage == "fit":
            # a validate() before this fit left the metrics' states as inference-mode tensors,
            # which fit's validation (no_grad, not inference mode) cannot update in place
            for metric in self.modules():
                if isinstance(metric, Metric):
                    metric.reset()
        if stage == "fit" and self.trainer.is_global_zero:
            for callback in self.trainer.checkpoint_callbacks:
                if getattr(callback, "dirpath", None):
                    check_writable(callback.dirpath, "checkpoint directory")

    def check_finite(self, name: str, value: torch.Tensor) -> bool:
        """True when ``value`` is all finite; otherwise raise (``nan_policy: raise``) or warn and
        return False (``"skip"``), naming the quantity and the step.

        Under DDP and FSDP the ranks' flags are combined first (an all-reduce of one flag; every
        rank calls this at the same point of its step), so all ranks skip, or raise, together:
        a rank that skipped a backward pass alone would leave the others waiting in the
        gradients' all-reduce."""
        finite = torch.isfinite(value).all()
        if _distributed():
            finite = finite.to(torch.int32)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        ok = bool(finite)  # reads a device value: one host sync
        self._loss_checked = ok and name == "loss"
        if ok:
            if name == "loss":  # a loss that passes is back-propagated: a step is taken
                self._skip_streak.clear()
            return True
        bad = int((~torch.isfinite(value)).sum())
        where = f"{bad} of {value.numel()} values" if bad else "on another rank"
        message = f"non-finite {name} ({where}) at step {self.global_step}"
        if self.nan_policy == "raise":
            raise FloatingPointError(
                f"{message}; {self._cause()}the last checkpoint is the last good state"
            )
        self._skipped(name, message)
        return False

    def _cause(self) -> str:
        # read only on the way to an error: the weights, when they are what is non-finite
        bad = self._bad_weights()
        return f"caused by {bad}; " if bad else ""

    def _skipped(self, name: str, message: str) -> None:
        """A step skipped under ``nan_policy: skip``: a warning, or an error when the weights
        themselves are non-finite (no skip brings them back) or after ``max_consecutive_skips``
        skips in a row (every rank counts the same skips: their decisions are all-reduced)."""
        self.check_weights("nan_policy: skip cannot skip past it")
        self._skip_streak[name] += 1
        streak = sum(self._skip_streak.values())
        if streak >= self.max_consecutive_skips:
            what = ", ".join(f"non-finite {k} {n} times" for k, n in self._skip_streak.items())
            raise FloatingPointError(
                f"nan_policy: skip skipped {streak} steps in a row ({what}; the last: {message}): "
                f"nothing is being learned, stopped at max_consecutive_skips "
                f"({self.max_consecutive_skips}); find where the NaN comes from (the reward, the "
                "data, too high a learning rate); the last checkpoint is the last good state"
            )
        rank_zero_warn(f"{message}; step skipped ({streak} in a row)")

    def check_weights(self, consequence: str, distributed: bool = True) -> None:
        """Raise FloatingPointError when a weight of this module is NaN or Inf, saying
        ``consequence`` (what is not done); see :meth:`_bad_weights`."""
        bad = self._bad_weights(distributed)
        if bad:
            raise FloatingPointError(
                f"{bad}; {consequence}; no checkpoint or export is written from them, the last "
                "checkpoint is the last good state"
            )

    def _bad_weights(self, distributed: bool = True) -> str | None:
        """None when every weight is finite, else which are not. One read of the device: each
        parameter tensor's float32 sum, stacked (a NaN or Inf anywhere makes its sum non-finite;
        a sum needs no tensor-sized temporary, unlike ``isfinite``, and finite weights would have
        to reach 1e38 to overflow it). ``distributed``: under DDP and FSDP the ranks' flags are
        combined (every rank must call this at the same point)."""
        sums = [p.detach().sum(dtype=torch.float32) for p in self.parameters()]
        if not sums:
            return None
        finite = torch.isfinite(torch.stack([x.to(sums[0].device) for x in sums])).all()
        if distributed and _distributed():
            finite = finite.to(torch.int32)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            return None
        bad = [n for n, p in self.named_parameters() if not bool(p.isfinite().all())]
        where = f"{len(bad)} of {len(sums)} parameter tensors, e.g. {bad[0]}" if bad else None
        return (
            f"non-finite weights ({where or 'on another rank'}) after step "
            f"{self.global_step} (an optimizer step that overflowed: too high a learning rate, "
            "an fp16 overflow)"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every rank dumps the checkpoint (rank zero writes it): the flags can be all-reduced
        self.check_weights("checkpoint not written")

    def on_train_end(self) -> None:
        # every rank, before the export callback (rank zero alone) calls export()
        self.check_weights("not exported")

    def check_loss(self, loss: torch.Tensor) -> bool:
        """Whether a training step may go on with ``loss`` (automatic optimisation).

        Where the stage checks its gradients itself, the loss is read on the host with their
        norm, before the optimizer step: one read of the device a step instead of two, and none
        between the forward and the backward pass (on a GPU a read there waits for the forward
        and leaves the GPU idle while the host carries on). A non-finite loss then raises or, under
        ``nan_policy: skip``, drops the step's gradients (the optimizer step changes nothing).
        Where Lightning clips (fp16, DeepSpeed) it is read at once (:meth:`check_finite`).
        Returns False when the step is to be skipped now: the training step returns None.
        """
        # without a trainer (a step called by hand) the loss waits for the gradient check too
        if self._trainer is not None and self._lightning_clips():
            return self.check_finite("loss", loss)
        self._pending_losses = [*self._pending_losses, loss.detach()]
        return True

    def log_stats(self, stats: dict[str, torch.Tensor], **kwargs: Any) -> None:
        """``self.log_dict`` for a training step's logger-only statistics, on the steps whose
        metrics a logger writes (every ``trainer.log_every_n_steps``). Lightning writes only the
        last on-step value, and each ``self.log`` costs about a millisecond of host time (its
        result collection) that a GPU waits through when a step is bound by the host; between
        writes the statistics are not logged (a callback that monitors them on every step would
        not see them: monitor the loss, logged every step)."""
        trainer = self._trainer
        if trainer is not None:
            if not trainer.loggers:
                return
            # Lightning's test for "this step's metrics are written", from public attributes:
            # the step about to be taken is a multiple of log_every_n_steps, or the last one
            step = trainer.global_step + 1  # optimizer steps so far (the logged step) + this one
            if step % trainer.log_every_n_steps != 0 and not trainer.should_stop:
                return
        self.log_dict(stats, **kwargs)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """The Trainer's ``gradient_clip_val`` (automatic optimisation): the gradients' norm is
        checked for NaN/Inf and clipped in one pass (:meth:`clip_and_check_gradients`)."""
        if self._lightning_clips():
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_val and gradient_clip_algorithm == "value":  # check, then clamp each
            self.clip_and_check_gradients(optimizer, None)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            self.clip_and_check_gradients(optimizer, gradient_clip_val)

    def _lightning_clips(self) -> bool:
        """Lightning's own clipping where gradients are not plain local tensors: fp16's scaled
        gradients (the scaler skips steps with Inf, which is expected there) and DeepSpeed (the
        engine owns its partitioned gradients and clips them itself)."""
        from lightning.pytorch.strategies import DeepSpeedStrategy

        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler is not None or isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def clip_and_check_gradients(
        self, optimizer: torch.optim.Optimizer, max_norm: float | None
    ) -> torch.Tensor:
        """The global L2 norm of the gradients, computed once: NaN or Inf raises before the
        optimizer step (clipping would turn it into NaN weights), otherwise the gradients are
        scaled to at most ``max_norm`` (None: not clipped). Returns the norm before clipping.

        Under FSDP the norm is the FSDP root's, over every rank's shards; under DDP the local
        gradients are already all-reduced. Unlike Lightning's clipping this allows fused
        optimisers under bf16-mixed (Lightning refuses them there, a check meant for fp16's
        gradient scaler) and FSDP's norm clipping, which Lightning does not offer.
        """
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy):
            # FSDP's own clip_grad_norm_ reduces the norm across ranks; max_norm=inf only measures
            norm = self.trainer.strategy.model.clip_grad_norm_(max_norm or float("inf"))
            self._check_step_finite(norm, optimizer)
            return norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        params = [p for p in params if p.grad is not None]
        if not params:
            self._pending_losses = []
            return torch.zeros(())
        # one fused pass over the gradients for the norm, one to scale them
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if self._check_step_finite(norm, optimizer) and max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        return norm

    def _check_step_finite(self, norm: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Before the optimizer step, one read of the device: the gradients' norm and the losses
        :meth:`check_loss` kept since the last step. False: a non-finite loss under "skip", whose
        gradients were dropped; a non-finite gradient of finite losses always raises. Under DDP
        and FSDP the ranks' loss flags are combined first (an all-reduce of one flag), so all
        ranks skip, or raise, together."""
        losses, self._pending_losses = self._pending_losses, []
        norm_ok = torch.isfinite(norm)
        loss_ok = torch.ones_like(norm_ok)
        if losses:  # (batches of this optimizer step,) one flag each
            finite = torch.isfinite(torch.stack([x.float().reshape(()) for x in losses]))
            loss_ok = finite.to(norm_ok.device).all()
            if _distributed():
                # every rank takes the same decision (the norm is already the same everywhere):
                # a skip on one rank alone would leave the ranks' weights apart
                loss_ok = loss_ok.to(torch.int32)
                dist.all_reduce(loss_ok, op=dist.ReduceOp.MIN)
        if bool(norm_ok & loss_ok.bool()):  # the one read of the device on a good step
            self._skip_streak.clear()
            return True
        if not bool(loss_ok):
            bad = int((~finite).sum())
            where = f"in {bad} of the {len(losses)} batches of this optimizer step"
            where = where if bad else "on another rank"
            message = f"non-finite loss ({where}) at step {self.global_step}"
            if self.nan_policy == "raise":
                raise FloatingPointError(
                    f"{message}; {self._cause()}the optimizer step was not taken; the last "
                    "checkpoint is the last good state"
                )
            self._skipped("loss", message)
            optimizer.zero_grad(set_to_none=True)
            return False
        raise FloatingPointError(
            f"non-finite gradient at step {self.global_step}: the optimizer step was not "
            "taken; the last checkpoint is the last good state"
        )

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # the last line of defence, whatever the policy: a non-finite loss must never reach the
        # weights (a checkpoint written after it would hold NaN). A loss the step has just
        # checked is not read again (Lightning hands over loss / accumulation, finite alike),
        # nor one check_loss has kept: it is read with the gradients, before the optimizer step.
        checked, self._loss_checked = self._loss_checked, False
        if checked or self._pending_losses:
            return
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step}: not back-propagated; the last "
                "checkpoint is the last good state"
            )

    def configure_model(self) -> None:
        # called by the Trainer before optimisers and checkpoint restore; loads once
        if self.model is None:
            self.model = self.load_model()
            self.model.train()  # from_pretrained returns eval mode; Lightning toggles from here

    def configure_optimizers(self):
        return self._optimizers_for([p for p in self.model.parameters() if p.requires_grad])

    def _optimizers_for(self, params: list[torch.nn.Parameter]) -> dict:
        try:
            optimizer = self.optimizer_factory(params)
        except ValueError as err:  # torch's own checks (a negative lr, betas outside [0, 1))
            raise ValueError(f"model.optimizer: {err}; correct it in the config") from None
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
        self.check_weights(f"{out_dir} not exported", distributed=False)  # rank zero alone
        lora = self.model_options.lora
        merge = lora is None or lora.merge_on_export
        about = {"stage": type(self).__name__, "global_step": self.global_step}
        return export_hf(
            self.model,
            self.tokenizer,
            out_dir,
            merge_lora=merge,
            extra_json=self.export_extras(),
            about=about,
        )
