"""PPOModule, the RL stage: maximise E[r(x, y)] − β·KL(π‖πref) over responses the policy samples.

One training step is one iteration, under manual optimisation:

    prompts ─ rollout (sample, no grad) ─ score (reward, π_old, π_ref, V_old: one forward each)
            ─ per-token rewards (score − β·KL) ─ advantages ─ ppo_epochs × minibatches of
              manual_backward on the policy loss (+ value loss) (+ β·KL when it is a loss)
            ─ log ─ β update

The module orchestrates named parts, each chosen by ``class_path``: the ``advantage`` estimator
(``GAE`` with a critic: PPO; ``GroupRelative``: GRPO; ``LeaveOneOut``: RLOO), the ``critic``
(critics.py), the ``kl`` penalty (kl.py) and the ``policy_loss`` (policy_losses.py); their maths
live in ``advantages.py``, ``losses.py`` and ``policy_losses.py``. Making the rollout is
``ppo_experience.py``'s, the update ``ppo_update.py``'s, the metrics ``ppo_metrics.py``'s; this
file wires them into Lightning's loop. ``trainer.max_steps`` counts
optimizer steps: iterations × ppo_epochs × num_minibatches; a run stops at exactly that many,
inside an iteration if need be.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_rlhf.advantages import GAE, AdvantageEstimator
from lightning_rlhf.critics import Critic, ScalarModelCritic
from lightning_rlhf.kl import KLPenalty, sequence_kl
from lightning_rlhf.lora import adapters_off, train_only_adapters
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.modules.ppo_experience import ExperienceMixin
from lightning_rlhf.modules.ppo_forwards import response_outputs, sequence_inputs
from lightning_rlhf.modules.ppo_metrics import iteration_metrics
from lightning_rlhf.modules.ppo_options import PPOOptions, RewardShaping
from lightning_rlhf.modules.ppo_update import UpdateMixin
from lightning_rlhf.modules.rng import rng_state, set_rng_state
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.policy_losses import ClippedSurrogate, PolicyLoss
from lightning_rlhf.rewards import (
    RewardAdapter,
    RewardFunction,
    RewardModel,
    as_reward,
    check_scores,
    reward_functions,
)
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions
from lightning_rlhf.types import PromptBatch, Rollout, RolloutStats, Sequences

__all__ = ["PPOModule", "PPOOptions", "RewardShaping"]

# Lightning warns that a checkpoint under manual optimisation holds the state after the optimizer
# steps; an iteration's steps all finish before its checkpoint, which is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def ppo_adamw(params) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4: RL fine-tuning takes small steps from the SFT policy."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


def _check_options(ppo: PPOOptions, sampling: SamplingOptions, advantage: AdvantageEstimator):
    """Refuse options the RL stage cannot learn from, naming the option to change."""
    if ppo.samples_per_prompt < advantage.min_samples_per_prompt:
        raise ValueError(
            f"{type(advantage).__name__} needs ppo.samples_per_prompt >= "
            f"{advantage.min_samples_per_prompt} (responses per prompt), got {ppo.samples_per_prompt}"
        )
    if sampling.temperature == 0:  # greedy: π_old is one-hot, ratio 1, KL 0, entropy 0
        raise ValueError(
            "model.sampling.temperature: 0 samples greedily, and PPO learns nothing from "
            "greedy rollouts; use a temperature > 0 (1.0 samples the policy itself); "
            "eval_sampling.temperature: 0 is fine for validation"
        )


class PPOModule(ExperienceMixin, UpdateMixin, PolicyModule):
    """RL fine-tuning with a KL penalty to the reference policy: PPO, GRPO or RLOO by ``advantage``.

    Args:
        model_name_or_path: the initial policy (the SFT export, or any causal LM).
        ref_model_name_or_path: the reference policy πref; None uses the initial policy. With a
            LoRA policy and None, πref is the same model with its adapters disabled (no copy).
        reward: the reward of a (prompt, response): a ``RewardModel`` directory, the bundled
            ``TaskOracle``, a ``WeightedSum``, or any ``RewardFunction``; None:
            ``RewardModel("artifacts/rm")``.
        critic: the value function, for estimators that need one (``GAE``): ``ValueHead`` (on
            the policy's trunk), ``ScalarModelCritic`` (a model of its own, by default the reward
            model export) or ``LoraCritic`` (a second adapter of a LoRA policy); None:
            ``ScalarModelCritic("artifacts/rm")``. Estimators without a critic load none.
        model: loading options of the policy (dtype, attention, checkpointing, LoRA, remote code).
        optimizer: optimiser factory, given the policy's and the critic's parameters.
        schedule: learning-rate warm-up and decay over optimizer steps.
        sampling: how rollouts are sampled (temperature, top-k, top-p, max_new_tokens).
        ppo: the policy update (epochs, minibatches, value clipping and coefficient, group size).
        advantage: the advantage estimator: ``GAE`` (PPO, with a critic), ``GroupRelative``
            (GRPO) or ``LeaveOneOut`` (RLOO); the last two need ``samples_per_prompt`` ≥ 2.
            None: ``GAE()``.
        policy_loss: the policy-gradient loss and its aggregation over the minibatch:
            ``ClippedSurrogate`` (PPO's, with dual-clip) or ``GSPO``; None: ``ClippedSurrogate()``.
            The value loss and a KL loss term stay token means of each micro-batch, weighted by
            its rows.
        kl: the KL penalty to πref: β's controller, the estimator and where it goes (reward or
            loss); None: ``KLPenalty()`` (fixed β 0.05, k1, in the reward).
        shaping: clipping and missing-EOS penalty applied to the scores.
        oracle: scores rollouts and greedy answers to held-out prompts (the bundled
            ``TaskOracle``); None skips the oracle metrics.
        eval_sampling: how validation answers are generated (temperature 0 is greedy).
        num_logged_samples: held-out prompts and answers logged as a table at validation.
        log_samples_every_n_iterations: rollout samples logged as a table every this many iterations.
        nan_policy: a non-finite loss, reward or advantage stops the run ("raise") or skips the
            iteration with a warning ("skip"); checkpoints are never written from it.
        max_consecutive_skips: under ``nan_policy: skip``, this many iterations or minibatches
            skipped in a row stop the run with an error naming what was non-finite, how often.
        rollout: the engine that samples rollouts and validation answers: ``HFRollout`` (None,
            the default), ``PagedRollout`` or ``VLLMRollout`` (its own copy of the policy, sent
            the weights after every update: docs/vllm.md), by class_path (docs/rollout.md).
    """

    def __init__(
        self,
        model_name_or_path: str = "artifacts/sft",
        ref_model_name_or_path: str | None = None,
        reward: RewardFunction | None = None,
        critic: Critic | None = None,
        model: ModelOptions = ModelOptions(),
        optimizer: OptimizerCallable = ppo_adamw,
        schedule: ScheduleOptions = ScheduleOptions(warmup_steps=10, decay="constant"),
        sampling: SamplingOptions = SamplingOptions(),
        ppo: PPOOptions = PPOOptions(),
        advantage: AdvantageEstimator | None = None,
        policy_loss: PolicyLoss | None = None,
        kl: KLPenalty | None = None,
        shaping: RewardShaping = RewardShaping(),
        oracle: RewardFunction | None = None,
        eval_sampling: SamplingOptions = SamplingOptions(max_new_tokens=8, temperature=0.0),
        num_logged_samples: int = 8,
        log_samples_every_n_iterations: int = 50,
        nan_policy: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 10,
        rollout: RolloutEngine | None = None,
    ) -> None:
        super().__init__(
            model_name_or_path, model, optimizer, schedule, oracle, eval_sampling,
            num_logged_samples, rollout,
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["optimizer", "oracle", "reward", "critic", "advantage", "policy_loss", "kl",
                    "rollout"]
        )  # fmt: skip
        # None resolves here, so no two modules share a default component (or its β)
        advantage = advantage if advantage is not None else GAE()
        _check_options(ppo, sampling, advantage)
        self.automatic_optimization = False
        self.ref_model_name_or_path = ref_model_name_or_path
        self.reward = as_reward(reward if reward is not None else RewardModel("artifacts/rm"))
        self.advantage = advantage
        # the critic component; its networks are self.critic or self.value_head (checkpoint keys)
        self.value_model = None
        if advantage.needs_critic:
            self.value_model = critic if critic is not None else ScalarModelCritic()
        self.policy_loss = policy_loss if policy_loss is not None else ClippedSurrogate()
        self.kl = kl if kl is not None else KLPenalty()
        self.sampling = sampling
        self.ppo = ppo
        self.shaping = shaping
        self.log_samples_every_n_iterations = log_samples_every_n_iterations
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        self.critic: nn.Module | None = None
        self.value_head: nn.Module | None = None
        self._ref: list[nn.Module] = []  # a list: the frozen reference is neither trained nor saved
        self.val_reward = MeanMetric()
        self.last_metrics: dict[str, float] = {}

    # ----------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self._ref = self.load_reference(self.ref_model_name_or_path)
        if self.value_model is not None:
            self.value_model.build(self)
        for reward in reward_functions(self.reward):
            if isinstance(reward, RewardAdapter):
                reward.attach(self.model, self.model_name_or_path)
        if self.model_options.lora is not None:  # added adapters: the critic's trains, others not
            critic = getattr(self.value_model, "adapter", None)
            train_only_adapters(self.model, [self.model.active_adapter, *filter(None, [critic])])

    @property
    def _values_on_trunk(self) -> bool:
        """The critic reads the policy's own trunk (its states come from the policy forward)."""
        return self.value_model is not None and self.value_model.policy_states

    def _check_context(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        max_prompt = (
            getattr(datamodule, "hparams", {}).get("max_prompt_length") if datamodule else None
        )
        context = getattr(self.model.config, "max_position_embeddings", None)
        if max_prompt and context and max_prompt + self.sampling.max_new_tokens > context:
            raise ValueError(
                f"data.max_prompt_length ({max_prompt}) + model.sampling.max_new_tokens "
                f"({self.sampling.max_new_tokens}) exceeds the policy's context window ({context})"
            )

    def on_fit_start(self) -> None:
        self._check_context()
        for ref in self._ref:
            ref.to(self.device)
        self.reward.to(self.device)

    def on_validation_start(self) -> None:
        self.on_fit_start()

    # ----------------------------------------------------------------------------- forwards
    def _sequence(self, r: Sequences | Rollout, idx: Tensor | slice = slice(None)):
        return sequence_inputs(r, idx)

    def _policy_outputs(self, model: nn.Module, r: Sequences | Rollout, idx, hidden=False):
        """Logits for the response positions, (b, R, V), and optionally the trunk's states."""
        return response_outputs(model, r, idx, self.sampling.temperature, hidden)

    def _ref_logits(self, r: Sequences | Rollout, idx):
        if self._ref:
            return self._policy_outputs(self._ref[0], r, idx)[0]
        with adapters_off(self.model):  # LoRA: πref is the base model
            return self._policy_outputs(self.model, r, idx)[0]

    def _values(self, r: Sequences | Rollout, idx, states: Tensor | None) -> Tensor | None:
        """(b, R) value of the state before each response token; None without a critic."""
        if self.value_model is None:
            return None
        ids, mask, positions = self._sequence(r, idx)
        resp_len = r.response_ids.shape[1]
        return self.value_model.values(self, ids, mask, positions, resp_len, states)

    # ----------------------------------------------------------------------------- loop
    @property
    def iteration(self) -> int:
        return self.global_step // (self.ppo.ppo_epochs * self.ppo.num_minibatches)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout, info = self.make_rollout(batch)
        finite = all(
            self.check_finite(name, t)
            for name, t in (("rewards", rollout.rewards), ("advantages", rollout.advantages))
        )
        if not finite:
            return
        t0 = time.perf_counter()
        stats = self.update(rollout)
        info.update_s = time.perf_counter() - t0
        kl = sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.response_mask)
        self._log_iteration(rollout, info, stats, kl)
        # β follows this rollout's KL, averaged over ranks so that all keep one β
        kl_mean = self.trainer.strategy.reduce(kl[self.kl.estimator].detach(), reduce_op="mean")
        self.kl.update(
            float(kl_mean), n_steps=rollout.response_ids.shape[0] * self.trainer.world_size
        )

    def _log_iteration(
        self, r: Rollout, info: RolloutStats, stats: dict[str, Tensor], kl: dict[str, Tensor]
    ) -> None:
        metrics = iteration_metrics(
            r, info, stats, kl, self.kl.beta, self.tokenizer.eos_token_id,
            with_critic=self.value_model is not None,
        )  # fmt: skip
        if self.oracle is not None:
            metrics["train/oracle_score"] = self.oracle(info.prompts, info.texts).mean()
        self.log_dict(metrics, sync_dist=True, prog_bar=False)
        self.last_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("train/")}
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False)
        self.log("kl", metrics["train/kl_k1"], prog_bar=True, logger=False)
        self._log_samples(info)

    def _log_samples(self, info: RolloutStats) -> None:
        """The first 16 rollout samples as a table, every ``log_samples_every_n_iterations``."""
        every = self.log_samples_every_n_iterations  # in iterations
        if every and (self.iteration - 1) % every == 0:
            from lightning_rlhf.logs import log_samples

            rows = [[p, t, float(s)] for p, t, s in zip(info.prompts, info.texts, info.raw_scores)]
            log_samples(self.trainer, "train/samples", ["prompt", "response", "reward"], rows[:16])

    # ----------------------------------------------------------------------------- validation
    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        responses = self.score_generations(batch)
        scores = check_scores(self.reward(batch.prompts, responses), len(responses), self.reward)
        self.val_reward.update(scores)

    def on_validation_epoch_end(self) -> None:
        if self.val_reward.update_count:
            self.log("val/reward", self.val_reward.compute(), prog_bar=True)
        self.val_reward.reset()
        self.log_generation_scores()

    # ----------------------------------------------------------------------------- state
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        for critic in (self.critic, self.value_head):  # at most one; none without a critic
            if critic is not None:
                params += [p for p in critic.parameters() if p.requires_grad]
        return super()._optimizers_for(params)

    def export_extras(self) -> dict[str, dict]:
        """ppo_stats.json: the last iteration's training metrics (reward, KL to πref, β, ...)."""
        return {"ppo_stats.json": self.last_metrics} if self.last_metrics else {}

    def total_optimizer_steps(self) -> int:
        """``max_steps`` when set; otherwise batches (iterations) × optimizer steps per iteration."""
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        batches = int(self.trainer.estimated_stepping_batches)
        return batches * self.ppo.ppo_epochs * self.ppo.num_minibatches

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # refuses non-finite weights
        checkpoint["kl_controller"] = self.kl.state_dict()  # the key checkpoints have always used
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "kl_controller" in checkpoint:  # β, saved before and after the KL became a component
            self.kl.load_state_dict(checkpoint["kl_controller"])
        if checkpoint.get("rng") is not None:
            set_rng_state(checkpoint["rng"])
