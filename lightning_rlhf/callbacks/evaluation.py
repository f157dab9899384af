"""Evaluation during training: a held-out prompt set scored (and compared) every N steps."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer

from lightning_rlhf.rollout import SamplingOptions


class PolicyEvaluation(Callback):
    """Every ``every_n_steps`` optimizer steps, answer ``prompts`` with the policy being trained,
    score the answers with ``reward`` and log ``eval/score``; with ``against`` (e.g. the SFT
    export), also ``eval/win_rate`` over that policy's answers (sampled once, at fit start) and
    ``eval/length``. A table of samples goes to the loggers (W&B: a table).

    For a module that samples (``PolicyModule``: SFT, PPO/GRPO/RLOO, DPO). The statistics are
    those of ``python -m lightning_rlhf evaluate`` (``evaluation/stats.py``), so the curve and
    the final command agree.

    Args:
        prompts: held-out prompts (a prompt column or chat messages; file or hub name).
        reward: "oracle", a reward-model directory, module:function, or a RewardFunction.
        against: a policy directory to compare with; None logs the score only.
        every_n_steps: optimizer steps between evaluations (also run once at fit start).
        limit: the first N prompts only.
        sampling: how answers are sampled (greedy by default).
        num_logged_samples: rows of the sample table.
    """

    def __init__(
        self,
        prompts: str = "artifacts/task/prompts_val.jsonl",
        reward: str = "oracle",
        against: str | None = None,
        every_n_steps: int = 100,
        limit: int | None = 128,
        sampling: SamplingOptions | None = None,
        num_logged_samples: int = 8,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"PolicyEvaluation.every_n_steps must be >= 1, got {every_n_steps}")
        self.prompts, self.reward_spec, self.against = prompts, reward, against
        self.every_n_steps, self.limit = every_n_steps, limit
        self.sampling = sampling or SamplingOptions(max_new_tokens=8, temperature=0.0)
        self.num_logged_samples = num_logged_samples
        self._rows: list[dict] = []
        self._against_scores: list[float] | None = None
        self._against_lengths: list[float] | None = None
        self._last_step = -1

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_rlhf.evaluation import policy_eval

        self.reward = policy_eval.parse_reward(self.reward_spec)
        self.reward.to(pl_module.device)
        self._rows = policy_eval.load_prompts(
            self.prompts, pl_module.model_name_or_path, limit=self.limit
        )
        if self.against is not None:
            responses = policy_eval.sample_responses(self.against, self._rows, self.sampling)
            policy_eval.score_responses(self.reward, self._rows, responses)
            self._against_scores = [rs[0]["score"] for rs in responses]
            self._against_lengths = [float(rs[0]["length"]) for rs in responses]
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # an RL iteration takes several optimizer steps: evaluate when a multiple is crossed
        if trainer.global_step // self.every_n_steps > self._last_step // self.every_n_steps:
            self._evaluate(trainer, pl_module)

    @torch.no_grad()
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_rlhf.data.collate import collate_prompts
        from lightning_rlhf.evaluation import stats
        from lightning_rlhf.logs import log_samples
        from lightning_rlhf.rewards import check_scores

        self._last_step = trainer.global_step
        was_training = pl_module.model.training
        pl_module.model.eval()
        texts, lengths = [], []
        for start in range(0, len(self._rows), 64):
            batch = collate_prompts(
                self._rows[start : start + 64], pl_module.tokenizer.pad_token_id
            )
            batch = batch._replace(
                input_ids=batch.input_ids.to(pl_module.device),
                attention_mask=batch.attention_mask.to(pl_module.device),
            )
            generation, chunk = pl_module.sample(batch, self.sampling)
            texts += chunk
            lengths += generation.response_mask.sum(dim=1).float().tolist()
        pl_module.model.train(was_training)
        prompts = [r["prompt"] for r in self._rows]
        scores = check_scores(self.reward(prompts, texts), len(texts), self.reward).tolist()
        metrics = {
            "eval/score": sum(scores) / len(scores),
            "eval/length": sum(lengths) / len(lengths),
        }
        if self._against_scores is not None:
            w = stats.win_rate(scores, self._against_scores, num_resamples=1)
            metrics["eval/win_rate"] = w.win_rate.value
            metrics["eval/length_delta"] = metrics["eval/length"] - sum(
                self._against_lengths
            ) / len(self._against_lengths)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.last_metrics = metrics
        rows = [[p, t, s] for p, t, s in zip(prompts, texts, scores)][: self.num_logged_samples]
        log_samples(trainer, "eval/samples", ["prompt", "response", "score"], rows)
