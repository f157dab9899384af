"""PPOModule, the RL stage: maximise E[r(x, y)] − β·KL(π‖πref) over responses the policy samples.

One training step is one iteration, under manual optimisation:

    prompts ─ rollout (sample, no grad) ─ score (reward, π_old, π_ref, V_old: one forward each)
            ─ per-token rewards (score − β·KL) ─ advantages ─ ppo_epochs × minibatches of
              manual_backward on the clipped surrogate (+ value loss) (+ β·KL when it is a loss)

The advantage estimator is a component: ``GAE`` with a critic (PPO), ``GroupRelative`` (GRPO) or
``LeaveOneOut`` (RLOO), both critic-free. The maths (KL estimators, GAE, group baselines,
whitening, clipped losses) live in ``advantages.py`` and ``losses.py``; this module orchestrates.
``trainer.max_steps`` counts optimizer steps: iterations × ppo_epochs × num_minibatches; a run
stops at exactly that many, inside an iteration if need be.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_rlhf.advantages import (
    GAE,
    KL_ESTIMATORS,
    AdaptiveKLController,
    AdvantageEstimator,
    FixedKLController,
    masked_mean,
    masked_var,
    masked_whiten,
    penalized_rewards,
)
from lightning_rlhf.losses import (
    entropy_from_logits,
    logprob_mismatch,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
)
from lightning_rlhf.models import (
    LoraOptions,
    ModelOptions,
    adapter_active,
    adapters_off,
    check_same_tokenizer,
    load_scalar_model,
    lora_config,
    padded_positions,
    token_scalars,
    train_only_adapters,
)
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import (
    RewardAdapter,
    RewardFunction,
    RewardModel,
    as_reward,
    check_scores,
    reward_functions,
)
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions, rollout_metrics, tempered
from lightning_rlhf.types import PromptBatch, Rollout

# Lightning warns that a checkpoint under manual optimisation holds the state after the optimizer
# steps; an iteration's steps all finish before its checkpoint, which is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def ppo_adamw(params) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4: RL fine-tuning takes small steps from the SFT policy."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


@dataclass
class PPOOptions:
    """The policy update (the same for every advantage estimator).

    Attributes:
        ppo_epochs: passes over each rollout.
        num_minibatches: minibatches per pass; each is one optimizer step.
        micro_batch_size: sequences per forward/backward inside a minibatch (gradient
            accumulation); None takes the whole minibatch at once.
        clip_range: ε of the clipped surrogate, ratio kept in [1−ε, 1+ε].
        clip_range_value: values kept within this distance of the rollout's; None: no clipping.
        vf_coef: weight of the value loss in the total loss (estimators with a critic).
        whiten_advantages: normalise advantages to mean 0, std 1 over each rollout.
        max_grad_norm: clip the gradient norm to this; None: no clipping.
        samples_per_prompt: responses sampled per prompt in each rollout (the group size of
            ``GroupRelative`` and ``LeaveOneOut``).
        reuse_sampling_logprobs: π_old's log-probs are those the sampler computed from the logits
            it drew from (no second forward over the rollout for them), when the engine samples
            with the trainer's module (not ``VLLMRollout``). The cached one-token forwards round
            differently from a full forward (fp32 ~1e-6, bf16 ~1e-2 per token), so the first ratio
            is near 1 and the KL to an identical πref near 0, not exactly; False recomputes π_old
            in one full forward for exact values (worth it under bf16). A value head on the
            policy's trunk needs that forward anyway and uses it.
    """

    ppo_epochs: int = 4
    num_minibatches: int = 4
    micro_batch_size: int | None = None
    clip_range: float = 0.2
    clip_range_value: float | None = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    max_grad_norm: float | None = 1.0
    samples_per_prompt: int = 1
    reuse_sampling_logprobs: bool = True

    def __post_init__(self) -> None:
        for name in ("ppo_epochs", "num_minibatches", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be at least 1, got {getattr(self, name)}")
        if self.clip_range <= 0:
            raise ValueError(f"ppo.clip_range must be > 0, got {self.clip_range}")
        if self.clip_range_value is not None and self.clip_range_value <= 0:
            raise ValueError(
                f"ppo.clip_range_value must be > 0 or null, got {self.clip_range_value}"
            )
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(
                f"ppo.micro_batch_size must be at least 1, got {self.micro_batch_size}"
            )


@dataclass
class RewardShaping:
    """What is done to each response's score before the KL penalty.

    Attributes:
        clip: clip scores to [−clip, clip]; None: no clipping.
        missing_eos_penalty: subtracted from the score of a response that never emitted EOS
            (it ran out of ``max_new_tokens``); None: no penalty.
    """

    clip: float | None = None
    missing_eos_penalty: float | None = None


class PPOModule(PolicyModule):
    """RL fine-tuning with a KL penalty to the reference policy: PPO, GRPO or RLOO by ``advantage``.

    Args:
        model_name_or_path: the initial policy (the SFT export, or any causal LM).
        ref_model_name_or_path: the reference policy πref; None uses the initial policy. With a
            LoRA policy and None, πref is the same model with its adapters disabled (no copy).
        reward: the reward of a (prompt, response): a ``RewardModel`` directory, the bundled
            ``TaskOracle``, a ``WeightedSum``, or any ``RewardFunction``.
        critic_name_or_path: the value model's initialisation (the reward model export by
            default); None puts a value head on the policy's trunk instead. Only estimators that
            need a critic (``GAE``) load one.
        critic_lora: with a LoRA policy (``model.lora``), the critic is a second LoRA adapter of
            these options on the policy's base model, with its own value head: policy, reference
            and critic share one base model in memory, and the critic's gradients do not touch
            the policy's adapter. ``critic_name_or_path`` is then not read.
        model: loading options of the policy (dtype, attention, checkpointing, LoRA, remote code).
        optimizer: optimiser factory, given the policy's and the critic's parameters.
        schedule: learning-rate warm-up and decay over optimizer steps.
        sampling: how rollouts are sampled (temperature, top-k, top-p, max_new_tokens).
        ppo: the policy update (epochs, minibatches, clipping, value coefficient, group size).
        advantage: the advantage estimator: ``GAE`` (PPO, with a critic), ``GroupRelative``
            (GRPO) or ``LeaveOneOut`` (RLOO); the last two need ``samples_per_prompt`` ≥ 2.
        kl_controller: β of the KL penalty: fixed, or adapted toward a target KL.
        kl_estimator: the per-token KL estimator: "k1" (log-ratio), "k2" (½ log-ratio²) or "k3"
            ((r−1) − log r, never negative); all three are logged.
        kl_penalty: where β·KL goes: "reward" (subtracted from the per-token rewards before the
            advantages) or "loss" (a term β·mean KL of the current policy added to the loss, as
            in GRPO; use it with "k3").
        shaping: clipping and missing-EOS penalty applied to the scores.
        oracle: scores rollouts and greedy answers to held-out prompts (the bundled
            ``TaskOracle``); None skips the oracle metrics.
        eval_sampling: how validation answers are generated (temperature 0 is greedy).
        num_logged_samples: held-out prompts and answers logged as a table at validation.
        log_samples_every_n_steps: rollout samples logged as a table every this many iterations.
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
        critic_name_or_path: str | None = "artifacts/rm",
        critic_lora: LoraOptions | None = None,
        model: ModelOptions = ModelOptions(),
        optimizer: OptimizerCallable = ppo_adamw,
        schedule: ScheduleOptions = ScheduleOptions(warmup_steps=10, decay="constant"),
        sampling: SamplingOptions = SamplingOptions(),
        ppo: PPOOptions = PPOOptions(),
        advantage: AdvantageEstimator = GAE(),
        kl_controller: FixedKLController | AdaptiveKLController = FixedKLController(0.05),
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_penalty: Literal["reward", "loss"] = "reward",
        shaping: RewardShaping = RewardShaping(),
        oracle: RewardFunction | None = None,
        eval_sampling: SamplingOptions = SamplingOptions(max_new_tokens=8, temperature=0.0),
        num_logged_samples: int = 8,
        log_samples_every_n_steps: int = 50,
        nan_policy: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 10,
        rollout: RolloutEngine | None = None,
    ) -> None:
        super().__init__(
            model_name_or_path,
            model,
            optimizer,
            schedule,
            oracle,
            eval_sampling,
            num_logged_samples,
            rollout,
        )
        self.save_hyperparameters(
            ignore=["optimizer", "oracle", "reward", "kl_controller", "advantage", "rollout"]
        )
        if ppo.samples_per_prompt < advantage.min_group_size:
            raise ValueError(
                f"{type(advantage).__name__} needs ppo.samples_per_prompt >= "
                f"{advantage.min_group_size} (responses per prompt), got {ppo.samples_per_prompt}"
            )
        if sampling.temperature == 0:  # greedy: π_old is one-hot, ratio 1, KL 0, entropy 0
            raise ValueError(
                "model.sampling.temperature: 0 samples greedily, and PPO learns nothing from "
                "greedy rollouts; use a temperature > 0 (1.0 samples the policy itself); "
                "eval_sampling.temperature: 0 is fine for validation"
            )
        self.automatic_optimization = False
        self.ref_model_name_or_path = ref_model_name_or_path
        self.reward = as_reward(reward if reward is not None else RewardModel("artifacts/rm"))
        self.critic_name_or_path = critic_name_or_path
        self.critic_lora = critic_lora
        self.sampling = sampling
        self.ppo = ppo
        self.advantage = advantage
        self.kl_controller = kl_controller
        self.kl_estimator = kl_estimator
        self.kl_penalty = kl_penalty
        self.shaping = shaping
        self.log_samples_every_n_steps = log_samples_every_n_steps
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
        self._configure_critic()
        for reward in reward_functions(self.reward):
            if isinstance(reward, RewardAdapter):
                reward.attach(self.model, self.model_name_or_path)
        if self.model_options.lora is not None:  # added adapters: the critic's trains, others not
            critic = [self.CRITIC_ADAPTER] if self.critic_lora is not None else []
            train_only_adapters(self.model, [self.model.active_adapter, *critic])

    def _configure_critic(self) -> None:
        if not self.advantage.needs_critic:
            return
        if self.critic_lora is not None:
            self._add_critic_adapter()
        elif self._critic_path is not None:
            trust = self.model_options.trust_remote_code  # the critic reads the policy's token ids
            check_same_tokenizer(self.model_name_or_path, self._critic_path, "critic", trust)
            options = replace(self.model_options, extra={})  # extra kwargs are the causal LM's
            self.critic = load_scalar_model(self._critic_path, options, self.tokenizer.pad_token_id)
            self.critic.train()
        else:
            self.value_head = nn.Linear(self.model.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    @property
    def _critic_path(self) -> str | None:
        if self.critic_lora is not None or not self.advantage.needs_critic:
            return None
        return self.critic_name_or_path

    CRITIC_ADAPTER = "critic"

    def _add_critic_adapter(self) -> None:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            raise ValueError(
                "model.critic_lora puts the critic on the policy's base model as a second LoRA "
                "adapter: it needs a LoRA policy (set model.model.lora), or leave critic_lora "
                "unset for a critic of its own (critic_name_or_path)"
            )
        self.model.add_adapter(self.CRITIC_ADAPTER, lora_config(self.critic_lora, "CAUSAL_LM"))
        self.value_head = nn.Linear(self.model.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def _value_head_on_policy(self) -> bool:
        """The value head reads the policy's own trunk (no separate critic forward)."""
        return self.value_head is not None and self.critic_lora is None

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
    def _sequence(self, r: Rollout | Any, idx: Tensor | slice = slice(None)):
        ids = torch.cat([r.query_ids[idx], r.response_ids[idx]], dim=1)  # (b, P + R)
        mask = torch.cat([r.query_mask[idx], r.response_mask[idx]], dim=1)
        positions = padded_positions(mask)
        return ids, mask, positions

    def _policy_outputs(self, model: nn.Module, r, idx, hidden: bool = False):
        """Logits for the response positions, (b, R, V), and optionally the trunk's states."""
        ids, mask, positions = self._sequence(r, idx)
        resp_len, length = r.response_ids.shape[1], ids.shape[1]
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            # the LM head only where a response token is predicted; indices, not a count: the
            # gathered states are contiguous, so a frozen model's head stays one matrix multiply
            # (a sliced view sends it to a batched one over copies of the weight, 2x slower on CPU)
            logits_to_keep=torch.arange(length - resp_len - 1, length - 1, device=ids.device),
            output_hidden_states=hidden,
            use_cache=False,
        )
        logits = out.logits  # (b, R, V): position t predicts response token t
        states = out.hidden_states[-1][:, -resp_len - 1 : -1] if hidden else None
        return tempered(logits, self.sampling.temperature), states

    def _ref_logits(self, r, idx):
        if self._ref:
            return self._policy_outputs(self._ref[0], r, idx)[0]
        with adapters_off(self.model):  # LoRA: πref is the base model
            return self._policy_outputs(self.model, r, idx)[0]

    def _values(self, r, idx, states: Tensor | None) -> Tensor | None:
        """(b, R) value of the state before each response token; None without a critic."""
        if self.value_head is not None and self.critic_lora is not None:
            ids, mask, positions = self._sequence(r, idx)
            resp_len = r.response_ids.shape[1]
            with adapter_active(self.model, self.CRITIC_ADAPTER):
                base = self.model.get_base_model()  # the causal LM, the adapters injected
                trunk = getattr(base, base.base_model_prefix)
                hidden = trunk(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
                ).last_hidden_state  # (b, P + R, H); the LM head is not run
            states = hidden[:, -resp_len - 1 : -1]
        if self.value_head is not None:
            return self.value_head(states).squeeze(-1).float()
        if self.critic is None:
            return None
        ids, mask, positions = self._sequence(r, idx)
        resp_len = r.response_ids.shape[1]
        return token_scalars(self.critic, ids, mask, positions)[:, -resp_len - 1 : -1]

    # ----------------------------------------------------------------------------- rollout
    def _score(
        self, prompts: list[str], texts: list[str], mask: Tensor, ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        # under nan_policy "skip" a non-finite score reaches the rewards, whose check skips the iteration
        skip = self.nan_policy == "skip"
        raw = check_scores(
            self.reward(prompts, texts), len(texts), self.reward, allow_nonfinite=skip
        )
        raw = raw.to(self.device)
        scores = raw
        if self.shaping.clip is not None:
            scores = scores.clamp(-self.shaping.clip, self.shaping.clip)
        if self.shaping.missing_eos_penalty is not None:
            no_eos = ~(ids == self.tokenizer.eos_token_id).any(dim=1)
            scores = scores - self.shaping.missing_eos_penalty * no_eos.float()
        return raw, scores

    @torch.no_grad()
    def make_rollout(self, batch: PromptBatch) -> tuple[Rollout, dict[str, Any]]:
        """Sample, score, and compute π_old, π_ref, V_old, rewards and advantages, once."""
        k = self.ppo.samples_per_prompt
        query_ids = batch.input_ids.repeat_interleave(k, dim=0)  # (B·k, P)
        query_mask = batch.attention_mask.repeat_interleave(k, dim=0)
        prompts = [p for p in batch.prompts for _ in range(k)]
        t0 = time.perf_counter()
        generation, texts = self.sample(PromptBatch(query_ids, query_mask, prompts), self.sampling)
        response_ids, response_mask = generation.response_ids, generation.response_mask
        t1 = time.perf_counter()
        raw, scores = self._score(prompts, texts, response_mask, response_ids)
        partial = Rollout(query_ids, query_mask, response_ids, response_mask, *([None] * 7))
        was_training = self.model.training
        self.model.eval()  # no dropout in these forwards: the sampler's ran in eval mode too
        if self._reuses_sampling_logprobs():
            logprobs, states = generation.logprobs, None
        else:
            logits, states = self._policy_outputs(
                self.model, partial, slice(None), hidden=self._value_head_on_policy
            )
            logprobs = token_logprobs(logits, response_ids)
        ref_logprobs = token_logprobs(self._ref_logits(partial, slice(None)), response_ids)
        values = self._values(partial, slice(None), states)
        self.model.train(was_training)
        mask = response_mask.float()
        values = torch.zeros_like(mask) if values is None else values * mask
        logprobs, ref_logprobs = logprobs * mask, ref_logprobs * mask
        beta = self.kl_controller.beta if self.kl_penalty == "reward" else 0.0
        rewards, kl = penalized_rewards(
            scores, logprobs, ref_logprobs, mask, beta, self.kl_estimator
        )
        advantages, returns = self.advantage(rewards, values, mask, self.ppo.samples_per_prompt)
        if self.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        t2 = time.perf_counter()
        eos = self.tokenizer.eos_token_id
        rollout = Rollout(
            query_ids, query_mask, response_ids, response_mask, logprobs, ref_logprobs, values,
            scores, rewards, advantages, returns,
        )  # fmt: skip
        info = {
            "texts": texts,
            "prompts": prompts,
            "raw_scores": raw,
            "reward_stats": self.reward.stats(),
            "kl": kl,
            "time/generation": t1 - t0,
            "time/scoring": t2 - t1,
            "rollout": {
                **rollout_metrics(generation, t1 - t0, self.sampling.max_new_tokens, eos),
                # the engine's log-probs against π_old (all 0 when π_old is the engine's)
                **{
                    f"rollout/{k}": v
                    for k, v in logprob_mismatch(generation.logprobs, logprobs, mask).items()
                },
            },
        }
        return rollout, info

    def _reuses_sampling_logprobs(self) -> bool:
        # an engine with its own weights and kernels (vLLM) is not π_old: its log-probs are
        # compared with π_old (rollout/logprob_diff_*), not used as it
        return (
            self.ppo.reuse_sampling_logprobs
            and self.rollout.live_logprobs
            and not self._value_head_on_policy
        )

    # ----------------------------------------------------------------------------- update
    def _loss(self, r: Rollout, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mask = r.response_mask[idx].float()
        logits, states = self._policy_outputs(self.model, r, idx, hidden=self._value_head_on_policy)
        logprobs = token_logprobs(logits, r.response_ids[idx])
        pg_loss, stats = ppo_policy_loss(
            logprobs, r.logprobs[idx], r.advantages[idx], mask, self.ppo.clip_range
        )
        loss = pg_loss
        if self.kl_penalty == "loss":
            kl = masked_mean(KL_ESTIMATORS[self.kl_estimator](logprobs, r.ref_logprobs[idx]), mask)
            loss = loss + self.kl_controller.beta * kl
            stats["kl_loss"] = kl.detach()
        values = self._values(r, idx, states)
        if values is not None:
            vf_loss, vstats = value_loss(
                values, r.values[idx], r.returns[idx], mask, self.ppo.clip_range_value
            )
            loss = loss + self.ppo.vf_coef * vf_loss
            stats.update(vstats)
        with torch.no_grad():
            stats["entropy"] = masked_mean(entropy_from_logits(logits), mask)
        return loss, {**stats, "loss": loss.detach()}

    def _minibatch_step(self, r: Rollout, minibatch: Tensor, totals: dict[str, Tensor]) -> int:
        """One optimizer step on ``minibatch`` (rows of the rollout), accumulated over micro-batches.

        Each micro-batch's loss is a token mean, weighted by its share of the minibatch's rows.
        Returns the number of micro-batches whose statistics were added to ``totals``.
        """
        opt = self.optimizers()
        done = 0
        for m in minibatch.split(self.ppo.micro_batch_size or len(minibatch)):
            loss, stats = self._loss(r, m)
            if not self.check_finite("loss", loss):
                opt.zero_grad()  # the step is skipped whole: no half-accumulated gradient
                return done
            self.manual_backward(loss * len(m) / len(minibatch))
            for key, value in stats.items():  # summed on the device: no sync per micro-batch
                totals[key] = totals.get(key, 0.0) + value.detach().float()
            done += 1
        if self._lightning_clips():
            if self.ppo.max_grad_norm is not None:
                self.clip_gradients(opt, self.ppo.max_grad_norm, "norm")
        else:
            self.clip_and_check_gradients(opt, self.ppo.max_grad_norm)
        opt.step()
        opt.zero_grad()
        self.lr_schedulers().step()
        return done

    def update(self, r: Rollout) -> dict[str, Tensor]:
        """ppo_epochs × num_minibatches optimizer steps over the rollout; mean statistics.

        Stops early when ``trainer.max_steps`` is reached, so a run takes exactly that many
        optimizer steps (a skipped minibatch, or a max_steps that is not a multiple of the steps
        per iteration, would otherwise overshoot by up to an iteration's steps)."""
        n = r.response_ids.shape[0]
        last = self._trainer.max_steps if self._trainer is not None else -1
        totals: dict[str, Tensor] = {}
        count = 0
        for _ in range(self.ppo.ppo_epochs):
            order = torch.randperm(n, device=r.response_ids.device)
            # every row once per epoch; fewer rows than minibatches leaves no minibatch empty
            for minibatch in order.tensor_split(min(self.ppo.num_minibatches, n)):
                if 0 <= last <= self.global_step:
                    break
                count += self._minibatch_step(r, minibatch, totals)
        return {k: v / max(count, 1) for k, v in totals.items()}

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
        info["time/update"] = time.perf_counter() - t0
        self._log_iteration(rollout, info, stats)

    def _log_iteration(self, r: Rollout, info: dict[str, Any], stats: dict[str, Tensor]) -> None:
        mask = r.response_mask.float()
        log_ratio = r.logprobs - r.ref_logprobs  # (B, R), log π_old − log π_ref
        per_seq = {
            name: (fn(r.logprobs, r.ref_logprobs) * mask).sum(1).mean()
            for name, fn in KL_ESTIMATORS.items()
        }
        eos = (r.response_ids == self.tokenizer.eos_token_id).any(dim=1).float()
        metrics = {
            "train/reward": info["raw_scores"].mean(),
            "train/reward_shaped": r.scores.mean(),
            "train/reward_with_penalty": (r.rewards * mask).sum(1).mean(),
            **{f"train/kl_{name}": v for name, v in per_seq.items()},
            "train/kl": (log_ratio * mask).sum(1).mean(),
            "train/beta": torch.tensor(self.kl_controller.beta),
            "train/response_length": mask.sum(1).mean(),
            "train/eos_rate": eos.mean(),
            **{f"train/{k}": v for k, v in stats.items()},
            **info["rollout"],
            **{
                k: torch.tensor(info[k]) for k in ("time/generation", "time/scoring", "time/update")
            },
        }
        if self.advantage.needs_critic:
            returns_var = masked_var(r.returns, mask)
            explained = 1 - masked_var(r.returns - r.values, mask) / returns_var.clamp(min=1e-8)
            metrics["train/explained_variance"] = explained
        if self.oracle is not None:
            metrics["train/oracle_score"] = self.oracle(info["prompts"], info["texts"]).mean()
        metrics.update(
            {f"train/reward/{k}": torch.tensor(v) for k, v in info["reward_stats"].items()}
        )
        self.log_dict(metrics, sync_dist=True, prog_bar=False)
        self.last_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("train/")}
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False)
        self.log("kl", metrics["train/kl"], prog_bar=True, logger=False)
        # the controller sees the KL of this rollout, averaged over ranks so all keep one β
        kl_mean = self.trainer.strategy.reduce(
            metrics[f"train/kl_{self.kl_estimator}"].detach(), reduce_op="mean"
        )
        self.kl_controller.update(
            float(kl_mean), n_steps=r.response_ids.shape[0] * self.trainer.world_size
        )
        if (
            self.log_samples_every_n_steps
            and (self.iteration - 1) % self.log_samples_every_n_steps == 0
        ):
            from lightning_rlhf.logs import log_samples

            rows = [
                [p, t, float(s)]
                for p, t, s in zip(info["prompts"], info["texts"], info["raw_scores"])
            ]
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
        checkpoint["kl_controller"] = self.kl_controller.state_dict()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "kl_controller" in checkpoint:
            self.kl_controller.load_state_dict(checkpoint["kl_controller"])
        rng = checkpoint.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                with contextlib.suppress(RuntimeError):
                    torch.cuda.set_rng_state_all(rng["cuda"])
