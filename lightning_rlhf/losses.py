"""Loss functions for SFT, reward modelling and PPO.

Pure PyTorch. Every loss returns ``(loss, stats)`` where ``stats`` maps names to detached
0-dim tensors for logging. Shapes: ``B`` batch, ``T`` tokens, ``V`` vocabulary. Masks are
float or bool with 1 at valid tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rlhf.masked import masked_mean

# PPO's policy-gradient losses live in policy_losses.py; ppo_policy_loss is also read from here
from lightning_rlhf.policy_losses import ppo_policy_loss  # noqa: F401

_IGNORE_INDEX = -100


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def token_logprobs(logits: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Log-probability of each label: ``log pi(y_t) = z_t[y_t] - logsumexp(z_t)``.

    Rows of the flattened (B*T, V) logits are processed ``chunk_size`` at a time, each upcast to
    float32 and handed to the fused cross-entropy kernel (one log-softmax pass, and a backward that
    writes the logits' gradient once), so no full (B, T, V) float32 log-softmax is materialised in
    the forward pass (bf16 logits are fine). The chunks come from ``split``, whose backward is one
    concatenation. Positions with label -100 give 0.0. Under autograd each chunk's float32
    log-softmax is kept for the backward pass.

    Args:
        logits: (B, T, V), any float dtype; ``logits[:, t]`` scores ``labels[:, t]``.
        labels: (B, T) long, values in [0, V) or -100 (ignored).
        chunk_size: rows per chunk.

    Returns:
        (B, T) float32.
    """
    _check_chunk_size(chunk_size)
    B, T, V = logits.shape
    if B * T == 0:
        return logits.new_zeros((B, T), dtype=torch.float32)
    flat, flat_labels = logits.reshape(B * T, V), labels.reshape(B * T)
    if chunk_size >= B * T:  # one chunk: no split, whose backward would copy the whole gradient
        rows = [(flat, flat_labels)]
    else:
        rows = zip(flat.split(chunk_size), flat_labels.split(chunk_size))
    chunks = [
        -F.cross_entropy(z.float(), y, ignore_index=_IGNORE_INDEX, reduction="none")
        for z, y in rows
    ]  # (chunk,) each, 0.0 where ignored
    return torch.cat(chunks).view(B, T)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of the softmax distribution: ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``.

    Chunked over the flattened (B*T) rows and computed in float32, like
    :func:`token_logprobs`. Logits of ``-inf`` (tokens a top-k filter removed) have probability
    0 and contribute 0: the entropy of such a row is finite, and so is its gradient.

    Args:
        logits: (B, T, V), any float dtype.
        chunk_size: rows per chunk.

    Returns:
        (B, T) float32.
    """
    _check_chunk_size(chunk_size)
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)
    chunks = []
    for start in range(0, B * T, chunk_size):
        z = flat_logits[start : start + chunk_size].float()  # (chunk, V)
        # a -inf logit (top-k, a banned token) has probability 0 and adds 0, not 0 * -inf = NaN
        finite_z = z.masked_fill(torch.isneginf(z), 0.0)
        chunks.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * finite_z).sum(-1))
    if not chunks:  # B * T == 0
        return logits.new_zeros((B, T), dtype=torch.float32)
    return torch.cat(chunks).view(B, T)


def completion_nll(
    logits: Tensor, labels: Tensor, ignore_index: int = _IGNORE_INDEX
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean token cross-entropy over the positions whose label is not ``ignore_index``.

    ``loss = -sum_t m_t * log pi(y_t) / max(sum_t m_t, 1)`` with ``m_t = [y_t != ignore_index]``.
    ``logits[:, t]`` predicts ``labels[:, t]``: the caller does the shift (and may pass only the
    positions it learns, e.g. (1, N, V)). Computed in float32 by the fused cross-entropy kernel.
    If no position counts the loss is 0 (still attached to the graph, with zero gradient).

    Args:
        logits: (B, T, V), any float dtype.
        labels: (B, T) long.
        ignore_index: label value excluded from the loss.

    Returns:
        ``(loss, stats)``: 0-dim float32 loss; stats ``nll`` (= loss), ``tokens`` (number of
        counted positions, float), ``token_accuracy`` (fraction of counted positions where the
        label's logit is the largest, i.e. ``argmax(logits) == label`` up to ties).
    """
    counted = (labels != ignore_index).reshape(-1)  # (B*T,) bool
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
    targets = labels.reshape(-1).masked_fill(~counted, _IGNORE_INDEX)
    n_tokens = counted.sum().float()
    nll_sum = F.cross_entropy(flat, targets, ignore_index=_IGNORE_INDEX, reduction="sum")
    loss = nll_sum / n_tokens.clamp(min=1)
    with torch.no_grad():  # max instead of argmax: one cheaper pass over the vocabulary
        picked = flat.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B*T,)
        correct = (picked >= flat.amax(dim=-1)) & counted
        accuracy = correct.sum().float() / n_tokens.clamp(min=1)
    stats = {"nll": loss.detach(), "tokens": n_tokens, "token_accuracy": accuracy}
    return loss, stats


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, center_coef: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise Bradley-Terry reward-model loss, with optional margin and reward centering.

    ``loss = mean(-logsigmoid(chosen - rejected - margin))
    + center_coef * mean((chosen + rejected)**2)`` (margin as in Llama 2, centering as in
    Eisenstein et al. 2023). Computed in float32.

    Args:
        chosen: (B,) rewards of the preferred responses.
        rejected: (B,) rewards of the rejected responses.
        margin: (B,) or None (= 0).
        center_coef: weight of the centering term.

    Returns:
        ``(loss, stats)``: stats ``bt_loss`` (BT part only), ``accuracy`` (mean of
        chosen > rejected, ignoring margin), ``margin`` (mean chosen - rejected),
        ``chosen_reward``, ``rejected_reward`` (means).
    """
    chosen, rejected = chosen.float(), rejected.float()
    diff = chosen - rejected  # (B,)
    logits = diff if margin is None else diff - margin.float()
    bt_loss = -F.logsigmoid(logits).mean()
    loss = bt_loss + center_coef * ((chosen + rejected) ** 2).mean()
    stats = {
        "bt_loss": bt_loss.detach(),
        "accuracy": (chosen > rejected).float().mean().detach(),
        "margin": diff.mean().detach(),
        "chosen_reward": chosen.mean().detach(),
        "rejected_reward": rejected.mean().detach(),
    }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss.

    ``v_clip = old + clamp(values - old, -c, c)`` and
    ``loss = 0.5 * masked_mean(max((values - R)**2, (v_clip - R)**2))``; with
    ``clip_range=None`` it is ``0.5 * masked_mean((values - R)**2)``. ``old_values`` and
    ``returns`` are detached. Computed in float32.

    Args:
        values: (B, T) current value predictions (with grad).
        old_values: (B, T) value predictions at rollout time.
        returns: (B, T) targets R.
        mask: (B, T) 1 for valid tokens.
        clip_range: c, or None for no clipping.

    Returns:
        ``(loss, stats)``: stats ``value_loss`` (= loss), ``value_clipfrac`` (fraction of
        valid tokens where the clipped error is strictly larger; 0 without clipping).
    """
    values = values.float()
    mask = mask.to(values.dtype)
    returns = returns.detach().float()
    errors = (values - returns) ** 2  # (B, T)
    clipfrac = torch.zeros((), device=values.device)
    if clip_range is not None:
        old_values = old_values.detach().float()
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped_errors = (v_clipped - returns) ** 2
        clipfrac = masked_mean((clipped_errors > errors).float(), mask).detach()
        errors = torch.maximum(errors, clipped_errors)
    loss = 0.5 * masked_mean(errors, mask)
    return loss, {"value_loss": loss.detach(), "value_clipfrac": clipfrac}


def sequence_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Log-probability of each row's response: ``log pi(y|x) = sum_t m_t * log pi(y_t | y_<t)``.

    The shift is done here: ``logits[:, t]`` predicts ``input_ids[:, t + 1]``, so a response
    token at position 0 (no context) is never counted.

    Args:
        logits: (B, T, V), any float dtype, of the whole sequences.
        input_ids: (B, T) long.
        response_mask: (B, T) 1 on response tokens.

    Returns:
        (B,) float32.
    """
    labels = input_ids[:, 1:].masked_fill(response_mask[:, 1:] == 0, _IGNORE_INDEX)  # (B, T-1)
    return token_logprobs(logits[:, :-1], labels).sum(dim=-1)


def check_dpo_options(beta: float, loss_type: str, label_smoothing: float) -> None:
    """Raise ValueError for options :func:`dpo_loss` does not define."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to loss_type 'sigmoid' only")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Direct preference optimisation loss from sequence log-probs.

    With the log-ratio difference
    ``h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``:

    - ``"sigmoid"`` (DPO, Rafailov et al. 2023), with label smoothing eps (conservative DPO):
      ``loss = mean(-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h))``;
    - ``"ipo"`` (IPO, Azar et al. 2023): ``loss = mean((h - 1 / (2 * beta))**2)``.

    The implicit reward of a response is ``beta * (log pi(y) - log pi_ref(y))``. The reference
    log-probs are detached. Computed in float32.

    Args:
        policy_chosen_logps: (B,) log pi(y_w | x), with grad.
        policy_rejected_logps: (B,) log pi(y_l | x), with grad.
        ref_chosen_logps: (B,) log pi_ref(y_w | x).
        ref_rejected_logps: (B,) log pi_ref(y_l | x).
        beta: > 0; the strength of the KL regularisation (IPO's target margin is 1 / (2 beta)).
        loss_type: "sigmoid" or "ipo".
        label_smoothing: eps in [0, 0.5), the assumed rate of flipped labels; "sigmoid" only.

    Returns:
        ``(loss, stats)``: stats ``dpo_loss`` (= loss), ``chosen_reward`` and
        ``rejected_reward`` (means of the implicit rewards), ``accuracy`` (mean of chosen reward >
        rejected reward, strict), ``margin`` (mean chosen - rejected reward), ``chosen_logratio``
        and ``rejected_logratio`` (means of log pi - log pi_ref on each side: a proxy of the
        KL to the reference on the data's responses).
    """
    check_dpo_options(beta, loss_type, label_smoothing)
    chosen_logratio = policy_chosen_logps.float() - ref_chosen_logps.detach().float()  # (B,)
    rejected_logratio = policy_rejected_logps.float() - ref_rejected_logps.detach().float()
    h = chosen_logratio - rejected_logratio  # (B,)
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * (
            F.logsigmoid(-beta * h)
        )
    loss = losses.mean()
    with torch.no_grad():
        chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio
        stats = {
            "dpo_loss": loss.detach(),
            "chosen_reward": chosen_reward.mean(),
            "rejected_reward": rejected_reward.mean(),
            "accuracy": (chosen_reward > rejected_reward).float().mean(),
            "margin": (chosen_reward - rejected_reward).mean(),
            "chosen_logratio": chosen_logratio.mean(),
            "rejected_logratio": rejected_logratio.mean(),
        }
    return loss, stats


def logprob_mismatch(
    engine_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor, threshold: float = 0.1
) -> dict[str, Tensor]:
    """How far the rollout engine's log-probs of the sampled tokens are from the trainer's.

    ``d = |engine_logprobs - trainer_logprobs|`` on the valid tokens; ``logprob_diff_mean`` =
    masked mean of d, ``logprob_diff_max`` = its max (0 without valid tokens),
    ``logprob_diff_frac`` = share of valid tokens with d > ``threshold``. All detached, float32.

    Args:
        engine_logprobs: (B, T) log μ(y_t), what the engine sampled with.
        trainer_logprobs: (B, T) log π_old(y_t), the trainer's forward of the same tokens.
        mask: (B, T) 1 for valid tokens.
    """
    with torch.no_grad():
        mask = mask.float()
        d = (engine_logprobs.float() - trainer_logprobs.float()).abs() * mask  # (B, T)
        return {
            "logprob_diff_mean": masked_mean(d, mask),
            "logprob_diff_max": d.max() if d.numel() else d.new_zeros(()),
            "logprob_diff_frac": masked_mean((d > threshold).float(), mask),
        }


def truncated_importance_weights(
    trainer_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance sampling (TIS) for tokens drawn by an engine whose distribution μ
    differs slightly from the trainer's π_old: per-token weights for the policy loss.

    ``w_t = min(exp(log π_old(y_t) - log μ(y_t)), cap)`` on valid tokens, 0 elsewhere; detached.
    The PPO loss term of each token is multiplied by ``w_t`` before the masked mean, which
    corrects the gradient for sampling from μ instead of π_old (the cap bounds its variance).

    Args:
        trainer_logprobs: (B, T) log π_old(y_t) from the trainer's forward.
        engine_logprobs: (B, T) log μ(y_t) from the engine that sampled y.
        mask: (B, T) 1 for valid tokens.
        cap: C > 0, the largest weight.

    Returns:
        ``(weights, stats)``: weights (B, T) float32; stats ``is_weight_mean`` (masked mean of
        w) and ``is_capped_frac`` (share of valid tokens whose ratio exceeded the cap).
    """
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    with torch.no_grad():
        mask = mask.float()
        ratio = torch.exp(trainer_logprobs.float() - engine_logprobs.float())  # (B, T)
        weights = ratio.clamp(max=cap) * mask
        stats = {
            "is_weight_mean": masked_mean(weights, mask),
            "is_capped_frac": masked_mean((ratio > cap).float(), mask),
        }
    return weights, stats
