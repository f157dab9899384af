"""What the stages that train a causal LM share: sampling, and scoring generations at validation."""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric

from lightning_rlhf.models import ModelOptions, check_same_tokenizer, load_causal_lm
from lightning_rlhf.modules.base import StageModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import RewardFunction, as_reward
from lightning_rlhf.rollout import (
    Generation,
    HFRollout,
    RolloutEngine,
    SamplingOptions,
    decode_responses,
)
from lightning_rlhf.types import PromptBatch


class PolicyModule(StageModule):
    """Base of SFT and RL: a causal LM whose greedy answers to held-out prompts are scored by
    ``oracle`` at every validation, with a table of samples. Every response it samples comes from
    ``rollout``, the engine (None: ``HFRollout()``; see docs/rollout.md)."""

    def __init__(
        self,
        model_name_or_path: str,
        model: ModelOptions,
        optimizer: OptimizerCallable,
        schedule: ScheduleOptions,
        oracle: RewardFunction | None,
        eval_sampling: SamplingOptions,
        num_logged_samples: int,
        rollout: RolloutEngine | None = None,
    ) -> None:
        super().__init__(model_name_or_path, model, optimizer, schedule)
        self.rollout = HFRollout() if rollout is None else rollout
        self.oracle = None if oracle is None else as_reward(oracle, "oracle")
        self.eval_sampling = eval_sampling
        self.num_logged_samples = num_logged_samples
        self.val_oracle = MeanMetric()
        self._samples: list[list] = []

    def load_model(self) -> torch.nn.Module:
        return load_causal_lm(self.model_name_or_path, self.model_options)

    def load_reference(self, ref_name_or_path: str | None) -> list[torch.nn.Module]:
        """πref, frozen: ``ref_name_or_path`` or, when None, the initial policy; ``[]`` for a LoRA
        policy without one, whose πref is its own base model with the adapters disabled.

        In a list so that it is neither trained nor saved in checkpoints. It loads with the
        policy's options but without LoRA or gradient checkpointing: πref is never trained.
        """
        if ref_name_or_path is not None:  # it reads the policy's token ids
            trust = self.model_options.trust_remote_code
            check_same_tokenizer(self.model_name_or_path, ref_name_or_path, "reference", trust)
        elif self.model_options.lora is not None:
            return []
        options = replace(self.model_options, lora=None, gradient_checkpointing=False)
        ref = load_causal_lm(ref_name_or_path or self.model_name_or_path, options)
        return [ref.eval().requires_grad_(False)]

    def sample(self, batch: PromptBatch, sampling: SamplingOptions) -> tuple[Generation, list[str]]:
        """The sampled responses to a prompt batch, and their texts.

        The engine is bound to the live policy at each call, and told the weights' version: the
        optimizer step count, which changes exactly when the weights do.
        """
        sharded = self._sharded()
        self.rollout.bind(
            self.model,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            synced=sharded,
            sharded=self.trainer.strategy.model if sharded else None,
        )
        self.rollout.load_weights(self.model, self.global_step)
        generation = self.rollout.generate(batch.input_ids, batch.attention_mask, sampling)
        texts = decode_responses(self.tokenizer, generation.response_ids, generation.response_mask)
        return generation, texts

    def _sharded(self) -> bool:
        """Under FSDP or DeepSpeed every rank must run the same number of generation steps."""
        # both classes import without their backends installed (DeepSpeed's checks on setup)
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        trainer = self._trainer
        return (
            trainer is not None
            and trainer.world_size > 1
            and isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))
        )

    def score_generations(self, batch: PromptBatch) -> list[str]:
        """Greedy answers to held-out prompts: oracle score and logged samples."""
        _, responses = self.sample(batch, self.eval_sampling)
        scores = None
        if self.oracle is not None:
            scores = self.oracle(batch.prompts, responses)
            self.val_oracle.update(scores)
        for i in range(min(len(responses), self.num_logged_samples - len(self._samples))):
            self._samples.append(
                [batch.prompts[i], responses[i], None if scores is None else float(scores[i])]
            )
        return responses

    def log_generation_scores(self) -> None:
        from lightning_rlhf.logs import log_samples

        if self.val_oracle.update_count:
            self.log("val/oracle_score", self.val_oracle.compute(), prog_bar=True)
        self.val_oracle.reset()
        log_samples(self.trainer, "val/samples", ["prompt", "response", "score"], self._samples)
        self._samples = []
