"""The option groups of ``PPOModule`` that are plain values: the update's shape and the scores'
shaping. The parts with behaviour (critic, KL penalty, policy loss, advantage estimator) are
components of their own (critics.py, kl.py, policy_losses.py, advantages.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class PPOOptions:
    """The policy update (the same for every advantage estimator).

    Attributes:
        ppo_epochs: passes over each rollout.
        num_minibatches: minibatches per pass; each is one optimizer step.
        micro_batch_size: sequences per forward/backward inside a minibatch (gradient
            accumulation); None takes the whole minibatch at once.
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
        if self.clip_range_value is not None and self.clip_range_value <= 0:
            raise ValueError(
                f"ppo.clip_range_value must be > 0 or null, got {self.clip_range_value}"
            )
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(
                f"ppo.micro_batch_size must be at least 1, got {self.micro_batch_size}"
            )


@dataclass(frozen=True)
class RewardShaping:
    """What is done to each response's score before the KL penalty.

    Attributes:
        clip: clip scores to [−clip, clip]; None: no clipping.
        missing_eos_penalty: subtracted from the score of a response that never emitted EOS
            (it ran out of ``max_new_tokens``); None: no penalty.
    """

    clip: float | None = None
    missing_eos_penalty: float | None = None

    def __call__(self, scores: Tensor, no_eos: Tensor) -> Tensor:
        """(B,) shaped scores: ``clamp(s, -clip, clip) - missing_eos_penalty * no_eos``, where
        ``no_eos`` is (B,) bool, True for a response without EOS."""
        if self.clip is not None:
            scores = scores.clamp(-self.clip, self.clip)
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * no_eos.float()
        return scores


# fields of PPOModule that a checkpoint saved before its critic, KL penalty and policy loss became
# components holds in its hyperparameters; the components are not hyperparameters (the config
# gives them, as it does to a checkpoint of today)
_GONE = ("critic_name_or_path", "critic_lora", "kl_estimator", "kl_penalty")
_RENAMED = {"log_samples_every_n_steps": "log_samples_every_n_iterations"}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A PPOModule checkpoint's hyperparameters as today's module reads them: the fields that
    became components dropped, renamed ones renamed, ``ppo.clip_range`` (now
    ``policy_loss.clip_range``) dropped from ``ppo``. Those of other modules, or of a checkpoint
    of today, are returned unchanged."""
    if not str(hparams.get("_class_path", "")).endswith("PPOModule"):
        return hparams
    out = {_RENAMED.get(k, k): v for k, v in hparams.items() if k not in _GONE}
    ppo = out.get("ppo")
    names = {f.name for f in fields(PPOOptions)}
    if is_dataclass(ppo) or isinstance(ppo, dict):
        values = vars(ppo) if is_dataclass(ppo) else ppo
        out["ppo"] = {k: v for k, v in values.items() if k in names}  # as a config gives it
    return out
