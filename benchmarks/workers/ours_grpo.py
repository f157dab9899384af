"""Our GRPO stage as users run it (``configs/grpo.yaml``'s components): PPOModule with
group-relative advantages, no critic, the k3 KL as a loss term, under a Lightning Trainer.

Matched to TRL's ``GRPOTrainer`` (``trl_grpo.py``): ``batch_size`` prompts × ``samples_per_prompt``
responses per iteration, each response ``response_length`` tokens (EOS cannot be drawn before:
``min_new_tokens``), advantages scaled by the group's std and not whitened again, fixed β, one pass
and one optimizer step per rollout (GRPO's μ = 1: on-policy, so π_old is the sampler's log-probs on
our side and the detached current ones on TRL's, neither a forward of its own), in micro-batches of
``micro_batch`` responses, no gradient clipping on either side.
"""

from __future__ import annotations

from typing import Any

from common import PPOProbe, device, run_worker, training
from lit import StepCallback, data_settings, module_settings, trainer
from ours_ppo import sampled

from lightning_rlhf.advantages import GroupRelative
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.kl import FixedKLController, KLPenalty
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
from lightning_rlhf.policy_losses import ClippedSurrogate
from lightning_rlhf.rewards import RewardModel
from lightning_rlhf.rollout import HFRollout, SamplingOptions


def module(cfg: dict[str, Any], probe: PPOProbe) -> PPOModule:
    """The stage; its rollout engine, the default ``HFRollout()``, timed by ``probe``."""
    grpo = cfg["ppo"]
    rollout = HFRollout()
    rollout.generate = probe.generation(rollout.generate, sampled)
    return PPOModule(
        **module_settings(cfg),
        reward=RewardModel(cfg["rm_dir"], normalize=False),
        sampling=SamplingOptions(
            max_new_tokens=grpo["response_length"],
            temperature=1.0,
            min_new_tokens=grpo["response_length"],
        ),
        ppo=PPOOptions(
            ppo_epochs=1,
            num_minibatches=1,
            micro_batch_size=grpo["micro_batch"],
            whiten_advantages=False,
            max_grad_norm=None,
            samples_per_prompt=grpo["samples_per_prompt"],
            reuse_sampling_logprobs=True,
        ),
        advantage=GroupRelative(scale_by_std=True),
        policy_loss=ClippedSurrogate(clip_range=0.2),
        kl=KLPenalty(FixedKLController(grpo["kl_coef"]), estimator="k3", placement="loss"),
        oracle=None,
        log_samples_every_n_iterations=0,
        rollout=rollout,
    )


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    probe = PPOProbe(device(cfg))
    grpo_module = module(cfg, probe)
    data = PromptDataModule(**data_settings(cfg), max_prompt_length=cfg["max_length"])
    steps = StepCallback(device(cfg), probe)
    iterations = cfg["warmup"] + cfg["steps"]  # one optimizer step each
    trainer(cfg, [steps], iterations, clip=None, use_distributed_sampler=False).fit(
        grpo_module, datamodule=data
    )
    return training(cfg, steps.clock, grpo_module.model, iterations=probe.iterations)


if __name__ == "__main__":
    run_worker(run)
