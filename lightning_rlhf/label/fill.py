"""Filling the queue: two responses per prompt, sampled once and stored, so the server needs no
model. Two samples of one policy, or one from each of two (``against``), drawn with the rollout
sampler the RL stages train with."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

from lightning_rlhf.evaluate import answer_prompts
from lightning_rlhf.label.db import LabelDB
from lightning_rlhf.label.selection import priorities
from lightning_rlhf.rollout import SamplingOptions


def read_prompts(path: str) -> list[str]:
    """The distinct non-empty prompts of a prompt file (any format PromptDataModule reads)."""
    from lightning_rlhf.data.load import load_split, require_columns

    ds = load_split(path)
    require_columns(ds, ["prompt"], path)
    prompts = list(dict.fromkeys(p for p in ds["prompt"] if isinstance(p, str) and p.strip()))
    if not prompts:
        raise ValueError(f"{path}: the 'prompt' column holds no non-empty text")
    return prompts


def fill_queue(
    db: LabelDB,
    policy: str,
    prompts_path: str,
    against: str | None = None,
    num_pairs: int = 100,
    sampling: SamplingOptions | None = None,
    overlap: int = 1,
    overlap_share: float = 0.2,
    order: str = "random",
    rewards: list[str] = (),
    seed: int = 0,
) -> dict:
    """Queue up to ``num_pairs`` pairs of (policy, against) responses, counting those already in
    the database for the same two models (running the same command twice samples nothing new).

    ``overlap``: K, the annotators asked about each pair of the overlapping share;
    ``overlap_share``: the share of the new pairs that get K annotators (the rest get one).
    Pairs whose two responses are identical are not queued (they are counted). Returns counts.
    """
    if overlap < 1 or not 0.0 <= overlap_share <= 1.0:
        raise ValueError(
            f"--overlap must be >= 1 and --overlap-share in [0, 1], got {overlap}, {overlap_share}"
        )
    sampling = sampling or SamplingOptions(max_new_tokens=64, temperature=1.0)
    models = (str(Path(policy).resolve()), str(Path(against or policy).resolve()))
    need = num_pairs - db.count_pairs(models)
    if need <= 0:
        return {"queued": 0, "identical": 0, "already": db.count_pairs(models)}
    done = db.queued_prompts(models)
    rng = random.Random(seed)
    fresh = [p for p in read_prompts(prompts_path) if p not in done]
    rng.shuffle(fresh)
    prompts = fresh[:need]
    torch.manual_seed(seed)
    texts_a = answer_prompts(policy, prompts, sampling, 64, progress=False)
    texts_b = answer_prompts(against or policy, prompts, sampling, 64, progress=False)
    keep = [i for i in range(len(prompts)) if texts_a[i] != texts_b[i]]
    identical = len(prompts) - len(keep)
    prompts, texts_a, texts_b = ([xs[i] for i in keep] for xs in (prompts, texts_a, texts_b))
    ranks = priorities(order, prompts, texts_a, texts_b, list(rewards), seed)
    options = dataclasses.asdict(sampling) | {"seed": seed}
    with db.transaction():  # the whole fill lands, or none of it
        for p, a, b, rank in zip(prompts, texts_a, texts_b, ranks):
            want = overlap if rng.random() < overlap_share else 1
            db.add_pair(p, (a, b), models, options, rank, want, source=prompts_path)
    return {"queued": len(prompts), "identical": identical}


def rerank(db: LabelDB, order: str, rewards: list[str] = (), seed: int = 0) -> int:
    """Re-order the pairs still short of labels (after a reward model retrains); returns how many."""
    rows = db.open_pairs()
    if not rows:
        return 0
    ranks = priorities(
        order,
        [r["prompt"] for r in rows],
        [r["text_a"] for r in rows],
        [r["text_b"] for r in rows],
        list(rewards),
        seed,
    )
    db.set_priorities({r["id"]: v for r, v in zip(rows, ranks)})
    return len(rows)
