"""TRL's SFTTrainer on the same model, data and settings (runs in the TRL-latest environment).

Settings pinned by ``hf.pinned``; completion-only loss; ``padding_free`` and ``packing`` come from
the config (packing uses TRL's default best-fit-decreasing strategy, which implies padding-free).
"""

from __future__ import annotations

from typing import Any

import torch
from common import run_worker
from hf import fit, pinned
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        cfg["model_dir"], dtype=torch.float32, attn_implementation="sdpa"
    )
    args = pinned(
        cfg,
        SFTConfig,
        max_length=cfg["max_length"],
        packing=cfg.get("packing", False),
        padding_free=cfg.get("padding_free", False),
        completion_only_loss=True,
    )
    return fit(cfg, SFTTrainer, model, tokenizer, args)


if __name__ == "__main__":
    run_worker(run)
