"""The experience of one RL iteration: ``samples_per_prompt`` responses to each prompt, scored,
with π_old, πref and V_old from one no-grad forward each, then rewards and advantages, computed
once and read by every minibatch of the update (``ppo_update.py``)."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.masked import masked_whiten
from lightning_rlhf.modules.ppo_metrics import engine_metrics
from lightning_rlhf.rewards import check_scores
from lightning_rlhf.rollout import Generation
from lightning_rlhf.types import PromptBatch, Rollout, RolloutStats, Sequences


def repeat_prompts(batch: PromptBatch, k: int) -> PromptBatch:
    """Each prompt ``k`` times in a row, (B·k, P): a group's responses sit next to each other,
    as the group estimators read them."""
    return PromptBatch(
        batch.input_ids.repeat_interleave(k, dim=0),
        batch.attention_mask.repeat_interleave(k, dim=0),
        [p for p in batch.prompts for _ in range(k)],
    )


class ExperienceMixin:
    """``make_rollout`` and its parts, for ``PPOModule``, whose fields (``ppo``, ``sampling``,
    ``reward``, ``shaping``, ``kl``, ``advantage``, ``rollout``, ``nan_policy``) and forwards
    (``_policy_outputs``, ``_ref_logits``, ``_values``) they read."""

    def _score(self, prompts: list[str], texts: list[str], ids: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) raw and shaped scores of the responses ``ids`` (B, R)."""
        # under nan_policy "skip" a non-finite score reaches the rewards, whose check skips the iteration
        skip = self.nan_policy == "skip"
        raw = check_scores(
            self.reward(prompts, texts), len(texts), self.reward, allow_nonfinite=skip
        )
        raw = raw.to(self.device)
        no_eos = ~(ids == self.tokenizer.eos_token_id).any(dim=1)
        return raw, self.shaping(raw, no_eos)

    def _old_forwards(self, s: Sequences, generation: Generation) -> tuple[Tensor, Tensor, Tensor]:
        """(B, R) log π_old, log πref and V_old (zeros without a critic), 0 at masked positions."""
        was_training = self.model.training
        self.model.eval()  # no dropout in these forwards: the sampler's ran in eval mode too
        if self._reuses_sampling_logprobs():
            logprobs, states = generation.logprobs, None
        else:
            logits, states = self._policy_outputs(
                self.model, s, slice(None), hidden=self._values_on_trunk
            )
            logprobs = token_logprobs(logits, s.response_ids)
        ref_logprobs = token_logprobs(self._ref_logits(s, slice(None)), s.response_ids)
        values = self._values(s, slice(None), states)
        self.model.train(was_training)
        mask = s.response_mask.float()
        values = torch.zeros_like(mask) if values is None else values * mask
        return logprobs * mask, ref_logprobs * mask, values

    def _reuses_sampling_logprobs(self) -> bool:
        # an engine with its own weights and kernels (vLLM) is not π_old: its log-probs are
        # compared with π_old (rollout/logprob_diff_*), not used as it
        return (
            self.ppo.reuse_sampling_logprobs
            and self.rollout.live_logprobs
            and not self._values_on_trunk
        )

    def _rewards_and_advantages(
        self, scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, values: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, R) per-token rewards (the score, minus β·KL when in the reward), advantages
        (whitened over the rollout when ``ppo.whiten_advantages``) and returns."""
        rewards = self.kl.rewards(scores, logprobs, ref_logprobs, mask)
        advantages, returns = self.advantage(rewards, values, mask, self.ppo.samples_per_prompt)
        if self.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return rewards, advantages, returns

    @torch.no_grad()
    def make_rollout(self, batch: PromptBatch) -> tuple[Rollout, RolloutStats]:
        """Sample, score, and compute π_old, π_ref, V_old, rewards and advantages, once."""
        queries = repeat_prompts(batch, self.ppo.samples_per_prompt)  # (B·k, P)
        prompts = queries.prompts
        t0 = time.perf_counter()
        generation, texts = self.sample(queries, self.sampling)
        s = Sequences(
            queries.input_ids, queries.attention_mask, generation.response_ids,
            generation.response_mask,
        )  # fmt: skip
        t1 = time.perf_counter()
        raw, scores = self._score(prompts, texts, s.response_ids)
        logprobs, ref_logprobs, values = self._old_forwards(s, generation)
        mask = s.response_mask.float()
        rewards, advantages, returns = self._rewards_and_advantages(
            scores, logprobs, ref_logprobs, values, mask
        )
        t2 = time.perf_counter()
        rollout = Rollout(*s, logprobs, ref_logprobs, values, scores, rewards, advantages, returns)
        engine = engine_metrics(
            generation, logprobs, mask, t1 - t0, self.sampling.max_new_tokens,
            self.tokenizer.eos_token_id,
        )  # fmt: skip
        stats = RolloutStats(
            prompts, texts, raw, self.reward.stats(), t1 - t0, t2 - t1, engine=engine
        )
        return rollout, stats
