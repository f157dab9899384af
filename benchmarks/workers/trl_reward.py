"""TRL's RewardTrainer on the same model, pairs and settings (runs in the TRL-latest environment).

Settings pinned by ``hf.pinned``; no reward centering. TRL pads chosen and rejected together and
scores them in one forward, like ours.
"""

from __future__ import annotations

import datasets
import torch
from common import CONFIG, TokenCounter, baseline, matmul_params, result
from hf import StepCallback, pinned
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

baseline()
cfg = CONFIG
tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
model = AutoModelForSequenceClassification.from_pretrained(
    cfg["model_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
)
train = datasets.load_dataset("json", data_files=cfg["data"], split="train")
counter = TokenCounter(model, tokenizer.pad_token_id)
steps = StepCallback(counter)
args = pinned(RewardConfig, max_length=cfg["max_length"], center_rewards_coefficient=None)
RewardTrainer(
    model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[steps]
).train()
result(
    steps.clock,
    tokens_per_step=counter.per_step,
    rows_per_step=cfg["batch_size"],
    matmul_params=matmul_params(model),
)
