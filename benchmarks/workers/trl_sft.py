"""TRL's SFTTrainer on the same model, data and settings (runs in the TRL-latest environment).

Settings pinned by ``hf.pinned``; completion-only loss; ``padding_free`` and ``packing`` come from
the config (packing uses TRL's default best-fit-decreasing strategy, which implies padding-free).
"""

from __future__ import annotations

import datasets
import torch
from common import CONFIG, TokenCounter, baseline, matmul_params, result
from hf import StepCallback, pinned
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

baseline()
cfg = CONFIG
tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
model = AutoModelForCausalLM.from_pretrained(
    cfg["model_dir"], dtype=torch.float32, attn_implementation="sdpa"
)
train = datasets.load_dataset("json", data_files=cfg["data"], split="train")
counter = TokenCounter(model, tokenizer.pad_token_id)
steps = StepCallback(counter)
args = pinned(
    SFTConfig,
    max_length=cfg["max_length"],
    packing=cfg.get("packing", False),
    padding_free=cfg.get("padding_free", False),
    completion_only_loss=True,
)
SFTTrainer(
    model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[steps]
).train()
result(
    steps.clock,
    tokens_per_step=counter.per_step,
    rows_per_step=cfg["batch_size"],
    matmul_params=matmul_params(model),
)
