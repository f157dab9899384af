"""The policy update of one RL iteration: ``ppo_epochs`` passes over the rollout, each in
``num_minibatches`` optimizer steps, each step accumulated over micro-batches, with the policy
loss (+ the value loss) (+ β·KL when it is a loss)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.losses import entropy_from_logits, token_logprobs, value_loss
from lightning_rlhf.masked import masked_mean
from lightning_rlhf.types import Rollout


class UpdateMixin:
    """``update`` and its parts, for ``PPOModule``, whose fields (``ppo``, ``policy_loss``, ``kl``)
    and forwards (``_policy_outputs``, ``_values``) they read."""

    def _loss(
        self, r: Rollout, idx: Tensor, rows: int | None = None, tokens: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Micro-batch ``idx``'s share of the loss of its minibatch of ``rows`` rows and
        ``tokens`` response tokens (None: ``idx`` is the whole minibatch), and its statistics."""
        mask = r.response_mask[idx].float()
        rows = rows if rows is not None else len(idx)
        tokens = tokens if tokens is not None else mask.sum()
        logits, states = self._policy_outputs(self.model, r, idx, hidden=self._values_on_trunk)
        logprobs = token_logprobs(logits, r.response_ids[idx])
        loss, stats = self.policy_loss(
            logprobs, r.logprobs[idx], r.advantages[idx], mask, rows, tokens
        )
        rest = []  # token means of this micro-batch, weighted below by its share of the rows
        kl_loss, kl_stats = self.kl.loss(logprobs, r.ref_logprobs[idx], mask)
        if kl_loss is not None:
            rest.append(kl_loss)
            stats.update(kl_stats)
        values = self._values(r, idx, states)
        if values is not None:
            vf_loss, vstats = value_loss(
                values, r.values[idx], r.returns[idx], mask, self.ppo.clip_range_value
            )
            rest.append(self.ppo.vf_coef * vf_loss)
            stats.update(vstats)
        with torch.no_grad():
            stats["entropy"] = masked_mean(entropy_from_logits(logits), mask)
            stats["loss"] = stats["policy_loss"] + sum(x.detach() for x in rest)
        if rest:
            loss = loss + sum(rest) * (len(idx) / rows)
        return loss, stats

    def _minibatch_step(self, r: Rollout, minibatch: Tensor, totals: dict[str, Tensor]) -> int:
        """One optimizer step on ``minibatch`` (rows of the rollout), accumulated over micro-batches.

        Each micro-batch's loss is its share of the minibatch's (``policy_loss`` aggregation).
        Returns the number of micro-batches whose statistics were added to ``totals``.
        """
        opt = self.optimizers()
        rows, tokens = len(minibatch), r.response_mask[minibatch].sum()
        done = 0
        for m in minibatch.split(self.ppo.micro_batch_size or rows):
            loss, stats = self._loss(r, m, rows, tokens)
            if not self.check_finite("loss", loss):
                opt.zero_grad()  # the step is skipped whole: no half-accumulated gradient
                return done
            self.manual_backward(loss)
            for key, value in stats.items():  # summed on the device: no sync per micro-batch
                totals[key] = totals.get(key, 0.0) + value.detach().float()
            done += 1
        if self._lightning_clips():
            if self.ppo.max_grad_norm is not None:
                self.clip_gradients(opt, self.ppo.max_grad_norm, "norm")
        else:
            self.clip_and_check_gradients(opt, self.ppo.max_grad_norm)
        opt.step()
        opt.zero_grad()
        self.lr_schedulers().step()
        return done

    def update(self, r: Rollout) -> dict[str, Tensor]:
        """ppo_epochs × num_minibatches optimizer steps over the rollout; mean statistics.

        Stops early when ``trainer.max_steps`` is reached, so a run takes exactly that many
        optimizer steps (a skipped minibatch, or a max_steps that is not a multiple of the steps
        per iteration, would otherwise overshoot by up to an iteration's steps)."""
        n = r.response_ids.shape[0]
        last = self._trainer.max_steps if self._trainer is not None else -1
        totals: dict[str, Tensor] = {}
        count = 0
        for _ in range(self.ppo.ppo_epochs):
            order = torch.randperm(n, device=r.response_ids.device)
            # every row once per epoch; fewer rows than minibatches leaves no minibatch empty
            for minibatch in order.tensor_split(min(self.ppo.num_minibatches, n)):
                if 0 <= last <= self.global_step:
                    break
                count += self._minibatch_step(r, minibatch, totals)
        return {k: v / max(count, 1) for k, v in totals.items()}
