"""TRL 0.29.1's PPOTrainer (``trl.experimental.ppo``) on the same models, prompts and settings.

Runs in the TRL-0.29.1 environment. Policy and reference loaded apart from the same directory,
reward and value model from the reward model directory. Settings matched to ours: the rollout is
``per_device_train_batch_size`` prompts with no gradient accumulation (so every minibatch is one
optimizer step, as in ours), one forward chunk for the whole rollout, temperature 1, no stop token
(responses run to ``response_length``; the policy's generation config also suppresses EOS), fixed β
with the k1 estimator, fused AdamW and fp32 (or bf16 autocast and the for-loop AdamW, as the
case says), gradient checkpointing off, no sample generations, no
checkpoints.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
import trl.experimental.ppo.ppo_trainer as ppo_trainer
from common import PPOProbe, device, run_worker, training
from hf import Iterations, shared
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.experimental.ppo import PPOConfig, PPOTrainer


def _generated(args, kwargs, out):
    queries, responses = args[1], out[0]
    width = responses.shape[1] - queries.shape[1]
    return responses.shape[0], width, int((responses[:, queries.shape[1] :] != args[3]).sum())


def config(cfg: dict[str, Any]) -> PPOConfig:
    ppo, iterations = cfg["ppo"], cfg["warmup"] + cfg["steps"]
    return PPOConfig(
        **shared(cfg, prefix="trl-ppo-"),
        gradient_accumulation_steps=1,
        num_mini_batches=ppo["minibatches"],
        num_ppo_epochs=ppo["epochs"],
        local_rollout_forward_batch_size=cfg["batch_size"],
        total_episodes=iterations * cfg["batch_size"],
        response_length=ppo["response_length"],
        temperature=1.0,
        stop_token=None,
        missing_eos_penalty=None,
        kl_coef=ppo["kl_coef"],
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        num_sample_generations=0,
    )


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    probe = PPOProbe(device(cfg))
    ppo_trainer.batch_generation = probe.generation(ppo_trainer.batch_generation, _generated)
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"], padding_side="left")
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    policy = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], **kw)
    ref = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], **kw)
    value = AutoModelForSequenceClassification.from_pretrained(cfg["rm_dir"], num_labels=1, **kw)
    reward = AutoModelForSequenceClassification.from_pretrained(cfg["rm_dir"], num_labels=1, **kw)
    prompts = datasets.load_dataset("json", data_files=cfg["data"], split="train")
    prompts = prompts.map(
        lambda row: {"input_ids": tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]},
        remove_columns=prompts.column_names,
    )
    steps = Iterations(device(cfg), probe)
    trl = PPOTrainer(
        args=config(cfg),
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=prompts,
        eval_dataset=prompts.select(range(cfg["batch_size"])),
        callbacks=[steps],
    )
    probe.watch_update(trl.model)
    probe.watch_optimizer(trl.optimizer.optimizer)
    trl.train()
    return training(cfg, steps.clock, policy, iterations=probe.iterations)


if __name__ == "__main__":
    run_worker(run)
