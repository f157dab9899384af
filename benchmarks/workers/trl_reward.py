"""TRL's RewardTrainer on the same model, pairs and settings (runs in the TRL-latest environment).

Settings pinned by ``hf.pinned``; no reward centering. TRL pads chosen and rejected together and
scores them in one forward, like ours.
"""

from __future__ import annotations

from typing import Any

import torch
from common import run_worker
from hf import fit, pinned
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg["model_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = pinned(cfg, RewardConfig, max_length=cfg["max_length"], center_rewards_coefficient=None)
    return fit(cfg, RewardTrainer, model, tokenizer, args)


if __name__ == "__main__":
    run_worker(run)
