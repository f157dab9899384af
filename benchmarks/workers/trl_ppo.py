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

import tempfile

import datasets
import torch
import trl.experimental.ppo.ppo_trainer as ppo_trainer
from common import CONFIG, DEVICE, PPOProbe, baseline, matmul_params, result
from hf import StepCallback
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.experimental.ppo import PPOConfig, PPOTrainer

baseline()
cfg, ppo = CONFIG, CONFIG["ppo"]
probe = PPOProbe()


def _generated(args, kwargs, out):
    queries, responses = args[1], out[0]
    width = responses.shape[1] - queries.shape[1]
    return responses.shape[0], width, int((responses[:, queries.shape[1] :] != args[3]).sum())


ppo_trainer.batch_generation = probe.generation(ppo_trainer.batch_generation, _generated)


class Iterations(StepCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        probe.end_iteration()
        probe.iterations.clear()

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        probe.end_iteration()


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
iterations = cfg["warmup"] + cfg["steps"]
args = PPOConfig(
    output_dir=tempfile.mkdtemp(prefix="trl-ppo-"),
    per_device_train_batch_size=cfg["batch_size"],
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
    learning_rate=cfg["lr"],
    lr_scheduler_type="constant",
    weight_decay=0.0,
    optim="adamw_torch_fused" if cfg.get("fused", True) else "adamw_torch",
    bf16=cfg.get("precision") == "bf16-mixed",
    fp16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    report_to=[],
    use_cpu=DEVICE == "cpu",
    seed=cfg["seed"],
    disable_tqdm=True,
)
steps = Iterations()
trl = PPOTrainer(
    args=args,
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
result(
    steps.clock,
    rows_per_step=cfg["batch_size"],
    iterations=probe.iterations,
    matmul_params=matmul_params(policy),
)
