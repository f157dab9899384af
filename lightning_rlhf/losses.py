"""Loss functions for SFT, reward modelling and PPO.

Pure PyTorch. Every loss returns ``(loss, stats)`` where ``stats`` maps names to detached
0-dim tensors for logging. Shapes: ``B`` batch, ``T`` tokens, ``V`` vocabulary. Masks are
float or bool with 1 at valid tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rlhf.advantages import masked_mean

_IGNORE_INDEX = -100


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def token_logprobs(logits: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Log-probability of each label: ``log pi(y_t) = z_t[y_t] - logsumexp(z_t)``.

    Rows of the flattened (B*T, V) logits are processed ``chunk_size`` at a time and upcast to
    float32 per chunk, so no full (B, T, V) float32 log-softmax is materialised in the
    forward pass (bf16 logits are fine). Positions with label -100 give 0.0. Note that under
    autograd each chunk's float32 copy is kept for the backward pass.

    Args:
        logits: (B, T, V), any float dtype; ``logits[:, t]`` scores ``labels[:, t]``.
        labels: (B, T) long, values in [0, V) or -100 (ignored).
        chunk_size: rows per chunk.

    Returns:
        (B, T) float32.
    """
    _check_chunk_size(chunk_size)
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)
    flat_labels = labels.reshape(B * T)
    index = flat_labels.clamp(min=0).unsqueeze(-1)  # (B*T, 1)
    chunks = []
    for start in range(0, B * T, chunk_size):
        z = flat_logits[start : start + chunk_size].float()  # (chunk, V)
        picked = z.gather(-1, index[start : start + chunk_size]).squeeze(-1)  # (chunk,)
        chunks.append(picked - torch.logsumexp(z, dim=-1))
    if not chunks:  # B * T == 0
        return logits.new_zeros((B, T), dtype=torch.float32)
    logps = torch.cat(chunks).masked_fill(flat_labels == _IGNORE_INDEX, 0.0)
    return logps.view(B, T)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of the softmax distribution: ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``.

    Chunked over the flattened (B*T) rows and computed in float32, like
    :func:`token_logprobs`.

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
        chunks.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1))
    if not chunks:  # B * T == 0
        return logits.new_zeros((B, T), dtype=torch.float32)
    return torch.cat(chunks).view(B, T)


def completion_nll(
    logits: Tensor, labels: Tensor, ignore_index: int = _IGNORE_INDEX
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean token cross-entropy over the positions whose label is not ``ignore_index``.

    ``loss = -sum_t m_t * log pi(y_t) / max(sum_t m_t, 1)`` with ``m_t = [y_t != ignore_index]``.
    ``logits[:, t]`` predicts ``labels[:, t]``: the caller does the shift. If no position
    counts the loss is 0 (still attached to the graph, with zero gradient).

    Args:
        logits: (B, T, V), any float dtype.
        labels: (B, T) long.
        ignore_index: label value excluded from the loss.

    Returns:
        ``(loss, stats)``: 0-dim float32 loss; stats ``nll`` (= loss), ``tokens`` (number of
        counted positions, float), ``token_accuracy`` (fraction of counted positions where
        ``argmax(logits) == label``).
    """
    counted = labels != ignore_index  # (B, T) bool
    logps = token_logprobs(logits, labels.masked_fill(~counted, _IGNORE_INDEX))  # (B, T)
    n_tokens = counted.sum().float()
    loss = -logps.sum() / n_tokens.clamp(min=1)  # logps is 0 where not counted
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == labels) & counted
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


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate objective (Schulman et al. 2017), as a loss to minimise.

    ``ratio = exp(logprobs - old_logprobs)`` and
    ``loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``.
    ``old_logprobs`` and ``advantages`` are detached. Computed in float32.

    Args:
        logprobs: (B, T) log-probs under the current policy (with grad).
        old_logprobs: (B, T) log-probs under the policy that sampled the tokens.
        advantages: (B, T).
        mask: (B, T) 1 for valid tokens.
        clip_range: eps.

    Returns:
        ``(loss, stats)``: stats ``policy_loss`` (= loss), ``clipfrac`` (fraction of valid
        tokens where the clipped term is strictly larger, i.e. the gradient is zeroed),
        ``approx_kl`` (masked mean of ``0.5 * (logprobs - old_logprobs)**2``: Schulman's
        biased, low-variance k2 estimator of KL(pi_old || pi) on tokens sampled from pi_old),
        ``ratio_mean`` (masked mean of the ratio).
    """
    logprobs = logprobs.float()
    mask = mask.to(logprobs.dtype)
    advantages = advantages.detach().float()
    log_ratio = logprobs - old_logprobs.detach().float()  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy_loss": loss.detach(),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
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
