"""Filling the queue: two responses per prompt, sampled once and stored, so the server needs no
model. Two samples of one policy, or one from each of two (``against``), drawn with the rollout
sampler the RL stages train with."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

from lightning_rlhf.label.db import LabelDB
from lightning_rlhf.label.selection import priorities
from lightning_rlhf.rollout import SamplingOptions, decode_responses, generate


def read_prompts(path: str) -> list[str]:
    """The distinct non-empty prompts of a prompt file (any format PromptDataModule reads)."""
    from lightning_rlhf.data.load import load_split, require_columns

    ds = load_split(path)
    require_columns(ds, ["prompt"], path)
    prompts = list(dict.fromkeys(p for p in ds["prompt"] if isinstance(p, str) and p.strip()))
    if not prompts:
        raise ValueError(f"{path}: the 'prompt' column holds no non-empty text")
    return prompts


@torch.no_grad()
def sample_responses(
    model_dir: str, prompts: list[str], sampling: SamplingOptions, batch_size: int = 64
) -> list[str]:
    """One sampled response per prompt from the policy exported in ``model_dir``."""
    from lightning_rlhf.data.collate import collate_prompts
    from lightning_rlhf.data.text import encode_prompt
    from lightning_rlhf.models import load_causal_lm, load_tokenizer

    try:
        tokenizer = load_tokenizer(model_dir)
        model = load_causal_lm(model_dir).eval()
    except Exception as err:
        raise ValueError(
            f"policy {model_dir!r} could not be loaded ({type(err).__name__}: {err}); pass the "
            "directory a stage exported (config.json, weights, tokenizer)"
        ) from err
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = collate_prompts(
            [{"prompt_ids": encode_prompt(tokenizer, p), "prompt": p} for p in chunk],
            tokenizer.pad_token_id,
        )  # (b, P) left-padded
        g = generate(
            model,
            batch.input_ids,
            batch.attention_mask,
            sampling,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        out += decode_responses(tokenizer, g.response_ids, g.response_mask)
    return out


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
    texts_a = sample_responses(policy, prompts, sampling)
    texts_b = sample_responses(against or policy, prompts, sampling)
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
