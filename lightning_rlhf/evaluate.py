"""The bundled task's oracle score of an exported policy, overall and per task (the demo's).

For any policy, prompts and reward, with intervals and win rates, see ``lightning_rlhf.evaluation``
(``python -m lightning_rlhf evaluate``).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch
from tqdm import tqdm

from lightning_rlhf.data.collate import collate_prompts
from lightning_rlhf.data.load import load_split, require_columns
from lightning_rlhf.data.text import encode_prompt
from lightning_rlhf.models import load_causal_lm, load_tokenizer
from lightning_rlhf.rewards import RewardFunction, TaskOracle
from lightning_rlhf.rollout import HFRollout, RolloutEngine, SamplingOptions, decode_responses


@torch.no_grad()
def answer_prompts(
    model_dir: str,
    prompts: list[str],
    sampling: SamplingOptions | None = None,
    batch_size: int = 256,
    progress: bool = True,
    rollout: RolloutEngine | None = None,
) -> list[str]:
    """The policy's answer to each prompt, in order (greedy, 8 new tokens by default), sampled by
    ``rollout`` (None: ``HFRollout()``).

    Shows a progress bar with the rate in prompts/s on stderr unless ``progress`` is False.
    """
    sampling = sampling or SamplingOptions(max_new_tokens=8, temperature=0.0)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    engine = (rollout or HFRollout()).bind(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    answers: list[str] = []
    bar = tqdm(
        total=len(prompts),
        desc=f"answering ({model_dir})",
        unit="prompt",
        file=sys.stderr,
        disable=not progress,
    )
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = collate_prompts(
            [{"prompt_ids": encode_prompt(tokenizer, p), "prompt": p} for p in chunk],
            tokenizer.pad_token_id,
        )  # (b, P) left-padded
        generation = engine.generate(batch.input_ids, batch.attention_mask, sampling)
        answers += decode_responses(tokenizer, generation.response_ids, generation.response_mask)
        bar.update(len(chunk))
    bar.close()
    return answers


def evaluate_policy(
    model_dir: str,
    prompts_path: str,
    reward: RewardFunction | None = None,
    limit: int | None = None,
    sampling: SamplingOptions | None = None,
    batch_size: int = 256,
    progress: bool = True,
    rollout: RolloutEngine | None = None,
) -> dict[str, float]:
    """Mean reward (the bundled oracle by default) overall and per ``task`` column value."""
    reward = reward or TaskOracle()
    ds = load_split(prompts_path)
    require_columns(ds, ["prompt"], prompts_path)
    rows = list(ds)[:limit]
    prompts = [r["prompt"] for r in rows]
    answers = answer_prompts(model_dir, prompts, sampling, batch_size, progress, rollout)
    by_task: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(rows), batch_size):  # the reward sees batches, as in training
        scores = reward(prompts[start : start + batch_size], answers[start : start + batch_size])
        for r, s in zip(rows[start : start + batch_size], scores.tolist()):
            by_task["all"].append(s)
            if "task" in r:
                by_task[r["task"]].append(s)
    return {k: sum(v) / len(v) for k, v in sorted(by_task.items())}
