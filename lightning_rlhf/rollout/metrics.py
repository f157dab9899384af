"""``rollout/*`` metrics: what one rollout generated and how fast."""

from __future__ import annotations

from torch import Tensor

from lightning_rlhf.rollout.sampling import Generation


def rollout_metrics(
    generation: Generation, seconds: float, max_new_tokens: int, eos_token_id: int
) -> dict[str, Tensor]:
    """Per-rollout statistics of ``generation``, sampled in ``seconds``.

    tokens = Σ mask (response tokens, EOS included); tokens_per_s = tokens / seconds;
    response_length_mean / _max over rows of Σ_t mask; truncated = share of rows with
    max_new_tokens tokens and no EOS (cut by the limit, not ended by the policy).
    """
    lengths = generation.response_mask.sum(dim=1).float()  # (B,)
    ended = (generation.response_ids == eos_token_id).any(dim=1)  # (B,)
    truncated = (lengths >= max_new_tokens) & ~ended
    tokens = lengths.sum()
    return {
        "rollout/tokens": tokens,
        "rollout/tokens_per_s": tokens / max(seconds, 1e-9),
        "rollout/response_length_mean": lengths.mean(),
        "rollout/response_length_max": lengths.max(),
        "rollout/truncated": truncated.float().mean(),
    }
