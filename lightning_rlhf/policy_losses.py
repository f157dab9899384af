"""The policy-gradient loss of the RL stage, a component chosen by ``class_path`` (``model.policy_loss``).

Pure maths first (per-token losses and their aggregation over a minibatch, each with its formula
and shapes), then the components that ``PPOModule`` calls once per micro-batch:
``ClippedSurrogate`` (PPO's clipped ratio, the default, with dual-clip) and ``GSPO`` (one
length-normalised ratio per sequence). A new loss is one subclass of ``PolicyLoss``
(``token_losses``) and a YAML that names it: see docs/extending.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_rlhf.masked import masked_mean


def clipped_surrogate_losses(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate (Schulman et al. 2017), optionally dual-clipped.

    ``ratio = exp(logprobs - old_logprobs)`` and
    ``l = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``; with ``clip_ratio_c = c``
    (dual-clip PPO, Ye et al. 2020) ``l = min(l, -A * c)`` where ``A < 0``: a token whose ratio
    has grown far past 1 + eps under a negative advantage no longer sends an unbounded loss.
    ``old_logprobs`` and ``advantages`` are detached. Computed in float32.

    Args:
        logprobs: (B, T) log-probs under the current policy (with grad).
        old_logprobs: (B, T) log-probs under the policy that sampled the tokens.
        advantages: (B, T).
        mask: (B, T) 1 for valid tokens.
        clip_range: eps.
        clip_ratio_c: c > 1, or None for no dual clip.

    Returns:
        ``(losses, stats)``: losses (B, T); stats ``clipfrac`` (fraction of valid tokens where
        the clipped term is strictly larger, i.e. the gradient is zeroed), ``approx_kl`` (masked
        mean of ``0.5 * (logprobs - old_logprobs)**2``: Schulman's biased, low-variance k2
        estimator of KL(pi_old || pi) on tokens sampled from pi_old), ``ratio_mean`` (masked mean
        of the ratio) and, with a dual clip, ``dual_clipfrac`` (fraction of valid tokens it caps).
    """
    logprobs = logprobs.float()
    mask = mask.to(logprobs.dtype)
    advantages = advantages.detach().float()
    log_ratio = logprobs - old_logprobs.detach().float()  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    losses = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    if clip_ratio_c is not None:
        cap = -advantages * clip_ratio_c  # (B, T), the largest loss of a negative advantage
        capped = (advantages < 0) & (losses > cap)
        losses = torch.where(advantages < 0, torch.minimum(losses, cap), losses)
        stats["dual_clipfrac"] = masked_mean(capped.float(), mask)
    return losses, stats


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate objective, as a loss to minimise: the token mean of
    :func:`clipped_surrogate_losses`, ``loss = masked_mean(l, mask)``.

    Returns:
        ``(loss, stats)``: 0-dim loss; stats ``policy_loss`` (= loss) and those of
        :func:`clipped_surrogate_losses`.
    """
    losses, stats = clipped_surrogate_losses(
        logprobs, old_logprobs, advantages, mask, clip_range, clip_ratio_c
    )
    loss = masked_mean(losses, mask.to(losses.dtype))
    return loss, {"policy_loss": loss.detach(), **stats}


def gspo_losses(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025): the clipped surrogate on one importance ratio per sequence.

    ``s_b = exp(sum_t m_bt * (logprobs - old_logprobs)_bt / sum_t m_bt)``, the length-normalised
    sequence ratio, and ``L_b = max(-A_b * s_b, -A_b * clip(s_b, 1 - clip_low, 1 + clip_high))``.
    Returned per token in the form ``s_bt = sg(s_b) * pi(y_t) / sg(pi(y_t))``: every token of a
    row carries the value ``L_b``, and the mean over a row's tokens has the gradient of ``L_b``
    (``d s_b = s_b * mean_t d log pi(y_t)``); aggregated by ``seq_mean_token_mean`` it is GSPO's
    ``mean_b L_b``. ``A_bt`` is read per token (the estimators give a row one advantage).
    Computed in float32.

    Args:
        logprobs: (B, T) log-probs under the current policy (with grad).
        old_logprobs: (B, T) log-probs under the policy that sampled the tokens.
        advantages: (B, T), constant along each row.
        mask: (B, T) 1 for valid tokens.
        clip_low, clip_high: the ratio is kept in [1 - clip_low, 1 + clip_high].

    Returns:
        ``(losses, stats)``: losses (B, T), 0 at masked positions; stats ``clipfrac`` (fraction
        of rows whose clipped term is strictly larger), ``approx_kl`` (masked mean of
        ``0.5 * (logprobs - old_logprobs)**2``), ``ratio_mean`` (mean of ``s_b`` over rows).
    """
    logprobs = logprobs.float()
    mask = mask.to(logprobs.dtype)
    advantages = advantages.detach().float()
    log_ratio = logprobs - old_logprobs.detach().float()  # (B, T)
    seq_log_ratio = masked_mean(log_ratio, mask, dim=1)  # (B,), length-normalised
    token_log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(1)
    ratio = torch.exp(token_log_ratio)  # (B, T), value s_b at every token
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped) * mask
    with torch.no_grad():
        rows = (mask.sum(1) > 0).to(mask.dtype)  # (B,), rows with a token
        row_clipped = ((clipped > unclipped).to(mask.dtype) * mask).amax(1)  # (B,)
        stats = {
            "clipfrac": (row_clipped * rows).sum() / rows.sum().clamp(min=1),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": (seq_log_ratio.exp() * rows).sum() / rows.sum().clamp(min=1),
        }
    return losses, stats


LOSS_AGGREGATIONS = (
    "micro_batch_token_mean",
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
)


def aggregate_token_losses(
    losses: Tensor, mask: Tensor, mode: str, minibatch_rows: int, minibatch_tokens: Tensor
) -> Tensor:
    """One micro-batch's share of its minibatch's loss; the shares of a minibatch's micro-batches
    sum to the minibatch loss (gradient accumulation), whatever their sizes.

    With ``n_b = sum_t m_bt`` over the micro-batch's b rows, N rows and K tokens in the minibatch:

    - ``micro_batch_token_mean``: ``(sum_bt m_bt l_bt / sum_b n_b) * b / N``, each micro-batch's
      token mean weighted by its rows (without micro-batches: the token mean);
    - ``token_mean``: ``sum_bt m_bt l_bt / K``, the exact token mean of the minibatch;
    - ``seq_mean_token_mean``: ``sum_b (sum_t m_bt l_bt / n_b) / N``, every response weighs the
      same whatever its length;
    - ``seq_mean_token_sum``: ``sum_b sum_t m_bt l_bt / N`` (Dr. GRPO, Liu et al. 2025): no
      division by the response's length, which would favour long wrong answers.

    Rows or minibatches without a valid token contribute 0 (their count is clamped to 1).

    Args:
        losses: (b, T) per-token losses.
        mask: (b, T) 1 for valid tokens.
        mode: one of ``LOSS_AGGREGATIONS`` (verl's names, with underscores).
        minibatch_rows: N.
        minibatch_tokens: K, 0-dim (or a number).

    Returns:
        0-dim.
    """
    if mode == "micro_batch_token_mean":
        return masked_mean(losses, mask.to(losses.dtype)) * (losses.shape[0] / minibatch_rows)
    valid = mask.bool()
    summed = torch.where(valid, losses, 0.0)  # a NaN at a padded position stays out
    if mode == "token_mean":
        return summed.sum() / torch.as_tensor(minibatch_tokens).clamp(min=1)
    if mode == "seq_mean_token_mean":
        lengths = valid.sum(1).clamp(min=1).to(losses.dtype)
        return (summed.sum(1) / lengths).sum() / minibatch_rows
    if mode == "seq_mean_token_sum":
        return summed.sum() / minibatch_rows
    raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {mode!r}")


# ---------------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------------

Aggregation = Literal[
    "micro_batch_token_mean", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum"
]


class PolicyLoss:
    """Base of the policy losses: per-token losses (``token_losses``), then aggregated over the
    minibatch by ``loss_aggregation`` (:func:`aggregate_token_losses`).

    Args:
        loss_aggregation: how per-token losses make the minibatch's loss:
            "micro_batch_token_mean" (each micro-batch's token mean, weighted by its rows: the
            token mean without ``ppo.micro_batch_size``), "token_mean" (the exact token mean of
            the minibatch, across its micro-batches), "seq_mean_token_mean" (every response
            weighs the same) or "seq_mean_token_sum" (Dr. GRPO: no length normalisation).
    """

    def __init__(self, loss_aggregation: Aggregation = "micro_batch_token_mean") -> None:
        if loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(
                f"policy_loss.loss_aggregation must be one of {LOSS_AGGREGATIONS}, "
                f"got {loss_aggregation!r}"
            )
        self.loss_aggregation = loss_aggregation

    def token_losses(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(b, T) per-token losses and detached statistics; all inputs (b, T)."""
        raise NotImplementedError

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
        minibatch_rows: int, minibatch_tokens: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
        """This micro-batch's share of the minibatch's loss (the shares sum to it), and stats;
        ``policy_loss`` is the share scaled to the whole minibatch (b rows of N: share · N / b),
        so its mean over the micro-batches estimates the minibatch's loss."""
        losses, stats = self.token_losses(logprobs, old_logprobs, advantages, mask)
        share = aggregate_token_losses(
            losses, mask, self.loss_aggregation, minibatch_rows, minibatch_tokens
        )
        scaled = share.detach() * (minibatch_rows / losses.shape[0])
        return share, {"policy_loss": scaled, **stats}


class ClippedSurrogate(PolicyLoss):
    """PPO's clipped surrogate (:func:`clipped_surrogate_losses`), the default.

    Args:
        clip_range: ε, the ratio kept in [1−ε, 1+ε].
        clip_ratio_c: dual-clip PPO's c (> 1, e.g. 3.0): the loss of a negative advantage is
            capped at −A·c; None: no dual clip.
        loss_aggregation: see ``PolicyLoss``.
    """

    def __init__(
        self,
        clip_range: float = 0.2,
        clip_ratio_c: float | None = None,
        loss_aggregation: Aggregation = "micro_batch_token_mean",
    ) -> None:
        super().__init__(loss_aggregation)
        if clip_range <= 0:
            raise ValueError(f"policy_loss.clip_range must be > 0, got {clip_range}")
        if clip_ratio_c is not None and clip_ratio_c <= 1:
            raise ValueError(
                f"policy_loss.clip_ratio_c must be > 1 (e.g. 3.0) or null, got {clip_ratio_c}"
            )
        self.clip_range, self.clip_ratio_c = clip_range, clip_ratio_c

    def token_losses(self, logprobs, old_logprobs, advantages, mask):
        return clipped_surrogate_losses(
            logprobs, old_logprobs, advantages, mask, self.clip_range, self.clip_ratio_c
        )


class GSPO(PolicyLoss):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one length-normalised
    importance ratio per response, clipped (:func:`gspo_losses`).

    Args:
        clip_low, clip_high: the sequence ratio is kept in [1 − clip_low, 1 + clip_high]; the
            paper's 3e-4 and 4e-4 (a sequence ratio moves far less than a token's).
        loss_aggregation: "seq_mean_token_mean" gives GSPO's mean over responses.
    """

    def __init__(
        self,
        clip_low: float = 3e-4,
        clip_high: float = 4e-4,
        loss_aggregation: Aggregation = "seq_mean_token_mean",
    ) -> None:
        super().__init__(loss_aggregation)
        if clip_low <= 0 or clip_high <= 0:
            raise ValueError(
                f"policy_loss.clip_low and clip_high must be > 0, got {clip_low}, {clip_high}"
            )
        self.clip_low, self.clip_high = clip_low, clip_high

    def token_losses(self, logprobs, old_logprobs, advantages, mask):
        return gspo_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)
