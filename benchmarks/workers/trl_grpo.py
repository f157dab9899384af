"""TRL's ``GRPOTrainer`` (TRL latest) on the same models, prompts and settings as ``ours_grpo.py``.

Runs in the TRL-latest environment. The reward is the reward model's directory loaded as a
sequence classifier (TRL re-tokenises prompt + completion, as ours does); the reference is a second
copy of the policy (``beta`` > 0). A generation batch is ``batch_size`` prompts ×
``num_generations``; ``per_device_train_batch_size`` is ``micro_batch`` completions with
``gradient_accumulation_steps`` = ``steps_per_generation``, so each rollout is one optimizer step
(μ = 1, on-policy: TRL runs no π_old forward). EOS and pad are suppressed while sampling
(``generation_kwargs``), so every completion is ``response_length`` tokens; loss ``dapo`` (TRL's
default: the token mean over the accumulated batch), group std scaling (its default), no gradient
clipping. ``paged: true`` samples with transformers' continuous batching
(``use_transformers_continuous_batching``, formerly ``use_transformers_paged``).
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from common import PPOProbe, device, run_worker, training
from hf import Iterations, shared
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer


class Rollouts(Iterations):
    """:class:`Iterations` that also counts optimizer steps (the Trainer makes its optimizer when
    training starts)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.probe.watch_optimizer(getattr(optimizer, "optimizer", optimizer))
        super().on_train_begin(args, state, control, **kwargs)


def _generated(args, kwargs, out):
    completions = out[0]  # one token-id list per completion
    return len(completions), max(map(len, completions)), sum(map(len, completions))


def config(cfg: dict[str, Any], tokenizer) -> GRPOConfig:
    grpo, iterations = cfg["ppo"], cfg["warmup"] + cfg["steps"]
    group = grpo["samples_per_prompt"]
    accumulate = cfg["batch_size"] * group // grpo["micro_batch"]
    settings = shared(cfg, prefix="trl-grpo-")
    settings["per_device_train_batch_size"] = grpo["micro_batch"]
    return GRPOConfig(
        **settings,
        gradient_accumulation_steps=accumulate,
        steps_per_generation=accumulate,
        num_generations=group,
        max_steps=iterations,
        max_completion_length=grpo["response_length"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs={"suppress_tokens": [tokenizer.pad_token_id, tokenizer.eos_token_id]},
        beta=grpo["kl_coef"],
        num_iterations=1,
        epsilon=0.2,
        scale_rewards="group",
        loss_type="dapo",
        max_grad_norm=0.0,  # no clipping
        warmup_steps=0,
        logging_steps=10**9,
        log_completions=False,
        use_transformers_continuous_batching=bool(cfg.get("paged")),
    )


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    probe = PPOProbe(device(cfg))
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"], padding_side="left")
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    policy = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], **kw)
    reward = AutoModelForSequenceClassification.from_pretrained(cfg["rm_dir"], num_labels=1, **kw)
    reward_tokenizer = AutoTokenizer.from_pretrained(cfg["rm_dir"])
    prompts = datasets.load_dataset("json", data_files=cfg["data"], split="train")
    steps = Rollouts(device(cfg), probe)
    trl = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=config(cfg, tokenizer),
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_processing_classes=[reward_tokenizer],
        callbacks=[steps],
    )
    trl._generate_single_turn = probe.generation(trl._generate_single_turn, _generated)
    probe.watch_update(trl.model)
    trl.train()
    return training(cfg, steps.clock, policy, iterations=probe.iterations)


if __name__ == "__main__":
    run_worker(run)
