"""Score an exported policy with a reward function on held-out prompts (greedy by default).

python -m lightning_rlhf evaluate artifacts/sft --prompts artifacts/task/prompts_val.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from lightning_rlhf.data.collate import collate_prompts
from lightning_rlhf.data.load import load_split, require_columns
from lightning_rlhf.data.text import encode_prompt
from lightning_rlhf.models import load_causal_lm, load_tokenizer
from lightning_rlhf.rewards import RewardFunction, TaskOracle
from lightning_rlhf.rollout import SamplingOptions, decode_responses, generate


@torch.no_grad()
def evaluate_policy(
    model_dir: str,
    prompts_path: str,
    reward: RewardFunction | None = None,
    limit: int | None = None,
    sampling: SamplingOptions | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Mean reward (the bundled oracle by default) overall and per ``task`` column value."""
    reward = reward or TaskOracle()
    sampling = sampling or SamplingOptions(max_new_tokens=8, temperature=0.0)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    ds = load_split(prompts_path)
    require_columns(ds, ["prompt"], prompts_path)
    rows = list(ds)[:limit]
    by_task: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate_prompts(
            [
                {"prompt_ids": encode_prompt(tokenizer, r["prompt"]), "prompt": r["prompt"]}
                for r in chunk
            ],
            tokenizer.pad_token_id,
        )
        ids, mask = generate(
            model,
            batch.input_ids,
            batch.attention_mask,
            sampling,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        scores = reward(batch.prompts, decode_responses(tokenizer, ids, mask))
        for r, s in zip(chunk, scores.tolist()):
            by_task["all"].append(s)
            if "task" in r:
                by_task[r["task"]].append(s)
    return {k: sum(v) / len(v) for k, v in sorted(by_task.items())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="lightning_rlhf evaluate", description=evaluate_policy.__doc__)
    p.add_argument("model_dir")
    p.add_argument("--prompts", default="artifacts/task/prompts_val.jsonl")
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    result = evaluate_policy(a.model_dir, a.prompts, limit=a.limit)
    print(json.dumps({"model": a.model_dir, "oracle_score": result}))
    return result
