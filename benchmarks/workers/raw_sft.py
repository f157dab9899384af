"""The ceiling: a plain PyTorch training loop on the same model, data and settings.

Tokenised once up front (prompt, completion, EOS; loss on the completion), shuffled with a seeded
permutation, right-padded to the longest row of each batch, model forward, cross-entropy over the
shifted labels, backward, gradient clipping at 1.0, AdamW step (fused unless ``fused: false``;
bf16 autocast around the forward when the case asks for ``bf16-mixed``). No framework around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import StepClock, TokenCounter, device, run_worker, training
from transformers import AutoModelForCausalLM, AutoTokenizer


def encode(cfg: dict[str, Any], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of every example: prompt + completion + EOS, the prompt's labels -100."""
    rows = [json.loads(line) for line in Path(cfg["data"]).read_text().splitlines()]
    examples = []
    for row in rows:
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        ids = (p + c)[: cfg["max_length"]]
        examples.append((ids, ([-100] * len(p) + c)[: cfg["max_length"]]))
    return examples


def batches(cfg: dict[str, Any], examples, pad_token_id: int):
    """(ids, mask, labels) batches on the device, forever, in seeded epoch orders."""
    dev, size = device(cfg), cfg["batch_size"]
    g = torch.Generator().manual_seed(cfg["seed"])
    while True:
        order = torch.randperm(len(examples), generator=g).tolist()
        for i in range(0, len(order) - size + 1, size):
            chunk = [examples[j] for j in order[i : i + size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (x, y) in enumerate(chunk):
                ids[k, : len(x)], labels[k, : len(y)], mask[k, : len(x)] = (
                    torch.tensor(x),
                    torch.tensor(y),
                    1,
                )
            yield ids.to(dev), mask.to(dev), labels.to(dev)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    dev = device(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    model = (
        AutoModelForCausalLM.from_pretrained(
            cfg["model_dir"], dtype=torch.float32, attn_implementation="sdpa"
        )
        .to(dev)
        .train()
    )
    examples = encode(cfg, tokenizer)
    fused = cfg.get("fused", True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0, fused=fused)
    bf16 = cfg.get("precision") == "bf16-mixed"
    counter = TokenCounter(model, tokenizer.pad_token_id)
    clock = StepClock(dev)
    data = batches(cfg, examples, tokenizer.pad_token_id)
    for _ in range(cfg["warmup"] + cfg["steps"]):
        ids, mask, labels = next(data)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.mark()
        counter.step()
    return training(cfg, clock, model, counter)


if __name__ == "__main__":
    run_worker(run)
