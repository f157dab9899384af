"""What every rollout engine shares: the sampling options, the ``Generation`` it returns, and the
token draw of the engines that sample from logits themselves.

Tokens are drawn by inverse transform sampling (a cumulative sum
and one uniform number per row), not by ``torch.multinomial``, whose CPU kernel draws one
exponential number per vocabulary entry (a quarter of a generation's time at a 32k vocabulary
on a CPU).
The sampled tokens' log-probabilities under the policy at the sampling temperature come out of the
same logits, so PPO can use them as π_old without another forward.

Only ``SamplingOptions`` decide the distribution: the model's own ``generation_config``
(repetition penalties, suppressed tokens, default top-k) is not consulted, so the responses are
drawn from the policy the RL stage trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingOptions:
    """How responses are sampled.

    Attributes:
        max_new_tokens: longest response; a response that has not emitted EOS by then is cut.
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: sample among the k most likely tokens (0: no limit).
        top_p: nucleus sampling mass (1.0: no limit).
        min_new_tokens: EOS cannot be drawn before this many tokens (0: no limit). Like top-k and
            top-p it shapes only the draw: log-probabilities are the policy's, unmasked.
    """

    max_new_tokens: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )


class Generation(NamedTuple):
    """Sampled responses.

    response_ids:  (B, R) R <= max_new_tokens; pad after each row's first EOS
    response_mask: (B, R) 1 on response tokens up to and including the first EOS
    logprobs:      (B, R) float32 log π(token) under softmax(logits / temperature), 0 off the mask
    """

    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor


def response_mask(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """(B, R) 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = response_ids == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


def tempered(logits: Tensor, temperature: float) -> Tensor:
    """float32 ``logits / temperature`` (temperature 0 counts as 1e-6), the policy's scores at the
    sampling temperature; at 1.0 float32 logits are returned as they are: no copy, and no division
    in the backward pass."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / max(temperature, 1e-6)


def sample_tokens(
    logits: Tensor, sampling: SamplingOptions, banned: int | None = None, u: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token per row from next-token logits, and its log-probability.

    Args:
        logits: (B, V) next-token logits.
        banned: a token id that cannot be drawn (EOS before ``min_new_tokens``).
        u: (B, 1) float64 uniform numbers on [0, 1), one per row; drawn here when None. An engine
            that drops finished rows draws them for the whole batch and passes the live rows',
            so that each row's draws do not depend on when the others finished.
    Returns:
        tokens: (B,) long; the argmax at temperature 0; otherwise a draw from softmax(logits / T)
            restricted to the top-k tokens, then to the smallest set of most likely tokens whose
            mass reaches top-p (the most likely token always stays).
        logprobs: (B,) float32 log softmax(logits / max(T, 1e-6)) at the tokens: the policy's
            distribution, before top-k, top-p and ``banned`` shaped the draw.
    """
    scaled = tempered(logits, sampling.temperature)  # (B, V)
    if sampling.temperature == 0:
        logz = scaled.logsumexp(dim=-1, keepdim=True)  # (B, 1)
        allowed = (
            scaled if banned is None else scaled.index_fill(1, _ids(banned, scaled), float("-inf"))
        )
        tokens = allowed.argmax(dim=-1)
    else:
        # logsumexp by hand, keeping its exponentials: they are the draw's weights
        top = scaled.amax(dim=-1, keepdim=True)  # (B, 1)
        weights = (scaled - top).exp_()  # (B, V) probabilities times Z
        logz = top + weights.sum(dim=-1, keepdim=True).log()
        tokens = _inverse_cdf(_truncated_probs(weights, sampling, banned), u)
    return tokens, (scaled.gather(1, tokens[:, None]) - logz).squeeze(1)


def uniforms(rows: int, device: torch.device) -> Tensor:
    """(rows, 1) float64 uniform numbers on [0, 1): the draw of one token for each row."""
    return torch.rand((rows, 1), dtype=torch.float64, device=device)


def _ids(token: int, like: Tensor) -> Tensor:
    return torch.tensor([token], device=like.device)


def _truncated_probs(weights: Tensor, sampling: SamplingOptions, banned: int | None) -> Tensor:
    """(B, V) ``weights`` (probabilities up to a factor per row, modified in place): ``banned``
    zeroed, then zero outside top-k and top-p (the order of transformers' processors and
    warpers); not renormalised."""
    probs = weights
    if banned is not None:
        probs[:, banned] = 0.0
    vocab = probs.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = probs.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        probs = probs.masked_fill(probs < kth, 0.0)  # ties at the k-th value all stay
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass = probs.sum(dim=-1, keepdim=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly more likely
        drop = before >= sampling.top_p * mass  # the set already reached top-p without it
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return probs


BLOCK = 256  # vocabulary entries per block of the two-level draw


def _inverse_cdf(probs: Tensor, u: Tensor | None = None) -> Tensor:
    """(B,) index i with cdf[i-1] <= u < cdf[i], u uniform on [0, total): P(i) = probs[i] / total.

    In two levels, so that no (B, V) float64 cumulative sum is made (a sequential scan on a CPU,
    the draw's largest cost): float64 sums of blocks of ``BLOCK`` entries pick the block, then the
    cumulative sum of that block alone picks the entry. Float64 keeps every token's interval true
    to its probability across a 150k vocabulary; a zero-probability entry is never drawn (u is
    held below the chosen block's own total).
    """
    B, V = probs.shape
    pad = -V % BLOCK
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(B, -1, BLOCK)
    sums = blocks.sum(dim=-1, dtype=torch.float64)  # (B, V / BLOCK)
    cdf = sums.cumsum(dim=-1)
    total = cdf[:, -1:]
    if u is None:
        u = uniforms(B, cdf.device)
    u = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))  # (B, 1) below total
    block = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)  # (B, 1)
    inner = blocks.gather(1, block[..., None].expand(B, 1, BLOCK)).squeeze(1)  # (B, BLOCK)
    inner_cdf = inner.double().cumsum(dim=-1)
    before = cdf.gather(1, (block - 1).clamp(min=0)).masked_fill_(block == 0, 0.0)  # <= u
    rest = u - before  # (B, 1) u within the block, held below the block's own total
    rest = torch.minimum(rest, inner_cdf[:, -1:].nextafter(torch.zeros_like(rest)))
    index = torch.searchsorted(inner_cdf, rest, right=True).squeeze(1)
    return block.squeeze(1) * BLOCK + index


def decode_responses(tokenizer, response_ids: Tensor, mask: Tensor) -> list[str]:
    """Response texts without padding and special tokens."""
    # two copies to the host for the batch, not two reads per row
    rows = [
        [t for t, m in zip(ids, keep) if m]
        for ids, keep in zip(response_ids.tolist(), mask.tolist())
    ]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
