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

from common import CONFIG, PPOProbe, baseline, matmul_params, result
from lit import StepCallback, adamw, trainer

import lightning_rlhf.modules.policy as policy_module
from lightning_rlhf.advantages import GAE
from lightning_rlhf.critics import ScalarModelCritic
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.kl import FixedKLController, KLPenalty
from lightning_rlhf.models import ModelOptions
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.policy_losses import ClippedSurrogate
from lightning_rlhf.rewards import RewardModel
from lightning_rlhf.rollout import SamplingOptions

baseline()
cfg, ppo = CONFIG, CONFIG["ppo"]
probe = PPOProbe()
policy_module.generate = probe.generation(
    policy_module.generate,
    lambda args, kwargs, out: (out[0].shape[0], out[0].shape[1], int(out[1].sum())),
)
module = PPOModule(
    model_name_or_path=cfg["model_dir"],
    reward=RewardModel(
        cfg["rm_dir"], normalize=False, pad_to_multiple_of=cfg.get("pad_to_multiple_of", 1)
    ),
    critic=ScalarModelCritic(cfg["rm_dir"]),
    model=ModelOptions(dtype="float32", attn_implementation="sdpa"),
    optimizer=adamw,
    schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
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
)
data = PromptDataModule(
    train_path=cfg["data"],
    val_path=None,
    val_fraction=0.0,
    tokenizer=cfg["model_dir"],
    max_prompt_length=cfg["max_length"],
    batch_size=cfg["batch_size"],
    seed=cfg["seed"],
)
steps = StepCallback(probe)
iterations = cfg["warmup"] + cfg["steps"]
optimizer_steps = iterations * ppo["epochs"] * ppo["minibatches"]
trainer([steps], optimizer_steps, clip=None, use_distributed_sampler=False).fit(
    module, datamodule=data
)
result(
    steps.clock,
    rows_per_step=cfg["batch_size"],
    iterations=probe.iterations,
    matmul_params=matmul_params(module.model),
)
