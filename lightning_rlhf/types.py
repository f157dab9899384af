"""Typed containers that travel between data, rollout and update, with the shape of every field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor


class LMBatch(NamedTuple):
    """A right-padded batch for next-token training (SFT).

    input_ids:      (B, T) prompt + completion ids, pad after the end
    attention_mask: (B, T) 1 on real tokens
    labels:         (B, T) = input_ids on completion tokens, -100 on prompt and pad (not yet shifted)
    position_ids:   (B, T) or None; restarts at 0 at each example of a packed row
    loss_index:     (N,) or None: the flat positions ``b * T + t`` whose next token is learned
                    (``labels[b, t + 1] != -100``), found by the collator on the host, so the step
                    does not read N back from the device; None: found in the step
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    position_ids: Tensor | None = None
    loss_index: Tensor | None = None


class PromptBatch(NamedTuple):
    """A left-padded batch of prompts, ready for generation.

    input_ids:      (B, P) pad before the prompt, so every prompt ends at column P-1
    attention_mask: (B, P)
    prompts:        B prompt texts, as the reward functions and the oracle see them
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompts: list[str]


class PreferenceBatch(NamedTuple):
    """Chosen and rejected in one right-padded batch, so one forward scores both.

    input_ids:      (2B, T) rows 0..B-1 chosen, rows B..2B-1 rejected (same order of pairs)
    attention_mask: (2B, T)
    margin:         (B,) required margin per pair (zeros when the data has none)
    prompts:        B prompt texts (for the oracle's agreement)
    responses:      2B response texts, chosen then rejected
    response_mask:  (2B, T) 1 on the response tokens of each row (its prompt and pad are 0), or
                    None; DPO sums the log-probs of these tokens, the reward model ignores it
    index:          (B,) long position of each pair in its data set (a stable key, e.g. for
                    cached reference log-probs), or None
    response_index: (N,) or None: the flat positions ``row * T + t`` whose next token is a
                    response token, found by the collator on the host (as LMBatch.loss_index)
    """

    input_ids: Tensor
    attention_mask: Tensor
    margin: Tensor
    prompts: list[str]
    responses: list[str]
    response_mask: Tensor | None = None
    index: Tensor | None = None
    response_index: Tensor | None = None


class Sequences(NamedTuple):
    """Prompts and responses, the inputs of every forward over a rollout (before it is scored).

    query_ids:      (B, P) left-padded prompts
    query_mask:     (B, P)
    response_ids:   (B, R) sampled tokens, pad after the first EOS
    response_mask:  (B, R) 1 up to and including the first EOS
    """

    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor


class Rollout(NamedTuple):
    """One PPO rollout: prompts, sampled responses and what was computed on them once, no grad.

    query_ids:      (B, P) left-padded prompts
    query_mask:     (B, P)
    response_ids:   (B, R) sampled tokens, pad after the first EOS
    response_mask:  (B, R) 1 up to and including the first EOS
    logprobs:       (B, R) log π_old(token), masked positions 0
    ref_logprobs:   (B, R) log π_ref(token)
    values:         (B, R) V_old(state before token)
    scores:         (B,)   reward of each full response (after normalisation, clipping, penalties)
    rewards:        (B, R) per-token reward: −β·KL, plus the score at the last response token
    advantages:     (B, R) GAE advantages (whitened if configured)
    returns:        (B, R) advantages + values
    """

    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor


@dataclass
class RolloutStats:
    """What an iteration leaves for its logs (the update reads only the ``Rollout``).

    prompts:       B prompt texts, one per response (a prompt repeated ``samples_per_prompt`` times)
    texts:         B response texts
    raw_scores:    (B,) the reward function's scores, before shaping
    reward_stats:  the reward function's own statistics (``RewardFunction.stats()``)
    generation_s:  seconds spent sampling
    scoring_s:     seconds spent scoring and in the π_old, πref and V_old forwards
    update_s:      seconds spent in the policy update (set after it)
    engine:        ``rollout/*`` metrics of the sampling (``rollout.rollout_metrics``) and the
                   engine's log-probs against π_old (``losses.logprob_mismatch``)
    """

    prompts: list[str]
    texts: list[str]
    raw_scores: Tensor
    reward_stats: dict[str, float] = field(default_factory=dict)
    generation_s: float = 0.0
    scoring_s: float = 0.0
    update_s: float = 0.0
    engine: dict[str, Tensor] = field(default_factory=dict)
