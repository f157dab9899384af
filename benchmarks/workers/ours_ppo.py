"""Our PPO stage as users run it: PPOModule + PromptDataModule under a Lightning Trainer.

Policy and reference from the same directory (a frozen copy), reward and critic from the reward
model directory (a ``RewardModel`` that re-tokenises the texts, as in ``configs/ppo.yaml``). EOS
cannot be drawn before ``response_length`` tokens (``min_new_tokens``; TRL's side: the policy's
generation config suppresses it), so every response is ``response_length`` tokens on both sides.
Matched to TRL 0.29.1's PPO: π_old's log-probs are the sampler's (TRL takes them from the generation
logits; neither side runs a forward for them), fixed β, k1 KL, whitened advantages, no reward
whitening, no gradient clipping (TRL's PPO loop clips none), one micro-batch per minibatch.
"""

from __future__ import annotations

from typing import Any

from common import PPOProbe, device, run_worker, training
from lit import StepCallback, data_settings, module_settings, trainer

from lightning_rlhf.advantages import GAE
from lightning_rlhf.critics import ScalarModelCritic
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.kl import FixedKLController, KLPenalty
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
from lightning_rlhf.policy_losses import ClippedSurrogate
from lightning_rlhf.rewards import RewardModel
from lightning_rlhf.rollout import Generation, HFRollout, SamplingOptions


def sampled(args, kwargs, out: Generation) -> tuple[int, int, int]:
    """Rows, response width and tokens sampled of one rollout."""
    return out.response_ids.shape[0], out.response_ids.shape[1], int(out.response_mask.sum())


def module(cfg: dict[str, Any], probe: PPOProbe) -> PPOModule:
    """The stage; its rollout engine, the default ``HFRollout()``, timed by ``probe``."""
    ppo = cfg["ppo"]
    rollout = HFRollout()
    rollout.generate = probe.generation(rollout.generate, sampled)
    return PPOModule(
        **module_settings(cfg),
        reward=RewardModel(
            cfg["rm_dir"], normalize=False, pad_to_multiple_of=cfg.get("pad_to_multiple_of", 1)
        ),
        critic=ScalarModelCritic(cfg["rm_dir"]),
        sampling=SamplingOptions(
            max_new_tokens=ppo["response_length"],
            temperature=1.0,
            min_new_tokens=ppo["response_length"],
        ),
        ppo=PPOOptions(
            ppo_epochs=ppo["epochs"],
            num_minibatches=ppo["minibatches"],
            max_grad_norm=None,
            clip_range_value=0.2,
            vf_coef=0.1,
            reuse_sampling_logprobs=True,
        ),
        advantage=GAE(gamma=1.0, lam=0.95),
        policy_loss=ClippedSurrogate(clip_range=0.2),
        kl=KLPenalty(FixedKLController(ppo["kl_coef"]), estimator="k1"),
        oracle=None,
        log_samples_every_n_iterations=0,
        rollout=rollout,
    )


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    ppo = cfg["ppo"]
    probe = PPOProbe(device(cfg))
    ppo_module = module(cfg, probe)
    data = PromptDataModule(**data_settings(cfg), max_prompt_length=cfg["max_length"])
    steps = StepCallback(device(cfg), probe)
    iterations = cfg["warmup"] + cfg["steps"]
    optimizer_steps = iterations * ppo["epochs"] * ppo["minibatches"]
    trainer(cfg, [steps], optimizer_steps, clip=None, use_distributed_sampler=False).fit(
        ppo_module, datamodule=data
    )
    return training(cfg, steps.clock, ppo_module.model, iterations=probe.iterations)


if __name__ == "__main__":
    run_worker(run)
