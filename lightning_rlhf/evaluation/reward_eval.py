"""Evaluate a reward model on a preference file: ``python -m lightning_rlhf evaluate-rm``.

Layouts read (by the one loader of ``data/load.py``: local files or hub names):

- pairs (RewardBench v1 and the reward stage's own data): ``prompt``, ``chosen``, ``rejected``
  as text, or ``chosen``/``rejected`` full texts sharing their prompt (HH), or lists of chat
  messages; an optional ``subset`` column;
- best-of-N (RewardBench v2): ``chosen`` and ``rejected`` are lists of completions of one
  prompt; rows of the ``Ties`` subset (several equally correct answers, ids ``ref:N`` /
  ``tied:N``) get RewardBench 2's ties score.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch

from lightning_rlhf.evaluation import rm_metrics
from lightning_rlhf.evaluation.stats import bootstrap_mean
from lightning_rlhf.rewards import RewardFunction, check_scores

log = logging.getLogger(__name__)


def _row_texts(row: dict, i: int, source: str, columns: dict, tokenizer) -> dict | None:
    """One row as {"prompt", "chosen": [..], "rejected": [..], "subset", "id"}; None to drop."""
    from lightning_rlhf.data.preference import _render_messages, split_shared_prefix

    chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
    prompt = row.get(columns["prompt"])
    is_messages = isinstance(chosen, list) and chosen and isinstance(chosen[0], dict)
    if is_messages:
        prompt, c, r = _render_messages(chosen, rejected, tokenizer)
        chosen, rejected = [c], [r]
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            prompt, c, r = split_shared_prefix(chosen, rejected)
            chosen, rejected = [c], [r]
        else:
            chosen, rejected = [chosen], [rejected]
    elif not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise ValueError(
            f"{source} row {i}: '{columns['chosen']}'/'{columns['rejected']}' must be text, "
            f"lists of completions or lists of messages, got {type(chosen).__name__}"
        )
    if not isinstance(prompt, str):
        raise ValueError(
            f"{source} row {i}: '{columns['prompt']}' must be text, got {prompt!r:.40}"
        )
    if not chosen or not rejected:
        raise ValueError(f"{source} row {i}: needs at least one chosen and one rejected response")
    if set(chosen) & set(rejected):
        return None  # a response both preferred and not: nothing to measure
    subset = row.get(columns["subset"])
    return {
        "prompt": prompt,
        "chosen": list(chosen),
        "rejected": list(rejected),
        "subset": None if subset is None else str(subset),
        "id": row.get("id"),
    }


def read_preferences(
    path: str,
    tokenizer=None,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    subset_column: str = "subset",
    limit: int | None = None,
) -> list[dict]:
    """The rows of a preference file, each with lists of chosen and rejected completions."""
    from lightning_rlhf.data.load import load_split, require_columns

    ds = load_split(path)
    require_columns(ds, [chosen_column, rejected_column], path)
    columns = {
        "prompt": prompt_column,
        "chosen": chosen_column,
        "rejected": rejected_column,
        "subset": subset_column,
    }
    rows, dropped = [], 0
    for i, row in enumerate(ds):
        parsed = _row_texts(row, i, path, columns, tokenizer)
        if parsed is None:
            dropped += 1
        else:
            rows.append(parsed)
    if dropped:
        log.warning(
            "%s: dropped %d rows whose chosen and rejected responses are equal", path, dropped
        )
    if not rows:
        raise ValueError(
            f"{path}: no usable rows among {len(ds)} ({dropped} with chosen == rejected)"
        )
    return rows[:limit]


def _score_all(reward: RewardFunction, rows: list[dict], batch_size: int) -> None:
    flat = [
        (r, side, j) for r in rows for side in ("chosen", "rejected") for j in range(len(r[side]))
    ]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        prompts = [r["prompt"] for r, _, _ in chunk]
        texts = [r[side][j] for r, side, j in chunk]
        scores = check_scores(reward(prompts, texts), len(chunk), reward)
        for (r, side, j), s in zip(chunk, scores.tolist()):
            r.setdefault(f"{side}_scores", [None] * len(r[side]))[j] = s


def _ties_rows(rows: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        kind, _, pid = str(r["id"]).partition(":")
        if kind not in ("ref", "tied"):
            raise ValueError(f"Ties row {i}: id must be 'ref:N' or 'tied:N', got {r['id']!r}")
        out.append(
            {
                "kind": kind,
                "prompt_id": pid,
                "correct": r["chosen_scores"],
                "incorrect": r["rejected_scores"],
            }
        )
    return out


def batch_invariance(reward: RewardFunction, rows: list[dict], n: int = 32) -> float | None:
    """Max |score at batch size 1 − score at batch size n| over the first n chosen responses.

    Padding must not move a score (a known failure of scorers that read the last position of a
    padded batch); None when the reward has no ``batch_size`` to vary.
    """
    if not hasattr(reward, "batch_size"):
        return None
    prompts = [r["prompt"] for r in rows[:n]]
    texts = [r["chosen"][0] for r in rows[:n]]
    saved = reward.batch_size
    try:
        reward.batch_size = 1
        one = reward(prompts, texts)
        reward.batch_size = max(n, 1)
        many = reward(prompts, texts)
    finally:
        reward.batch_size = saved
    return float((one - many).abs().max())


def evaluate_reward_model(
    reward: RewardFunction,
    path: str,
    tokenizer=None,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    **columns,
) -> dict:
    """Accuracy (overall, per subset, best-of-N), the ties score, calibration, margins and the
    pull of length, for ``reward`` on the preference file ``path``; JSON-ready."""
    tokenizer = tokenizer if tokenizer is not None else getattr(reward, "tokenizer", None)
    rows = read_preferences(path, tokenizer, limit=limit, **columns)
    _score_all(reward, rows, batch_size)
    ties = [r for r in rows if r["subset"] == "Ties"]
    rest = [r for r in rows if r["subset"] != "Ties"]
    result: dict = {"data": path, "rows": len(rows), "layout": {}}
    if rest:
        correct = rm_metrics.best_of_n_correct(
            [r["chosen_scores"] for r in rest], [r["rejected_scores"] for r in rest]
        )
        subsets = [r["subset"] or "all" for r in rest] if any(r["subset"] for r in rest) else None
        by_subset = rm_metrics.accuracy_by_subset(correct, subsets, seed)
        result["accuracy"] = {k: v.as_dict() for k, v in by_subset.items()}
        sizes = Counter(len(r["chosen"]) + len(r["rejected"]) for r in rest)
        result["layout"] = {"completions_per_row": dict(sizes)}
        pairs = [r for r in rest if len(r["chosen"]) == 1 and len(r["rejected"]) == 1]
        if pairs:
            margins = torch.tensor([r["chosen_scores"][0] - r["rejected_scores"][0] for r in pairs])
            result["pairwise_accuracy"] = bootstrap_mean(
                rm_metrics.pairwise_correct(margins), seed=seed
            ).as_dict()
            result["calibration"] = rm_metrics.calibration(margins)
            result["margins"] = rm_metrics.histogram(margins)
            result["length"] = rm_metrics.length_bias(
                [r["chosen_scores"][0] for r in pairs],
                [r["rejected_scores"][0] for r in pairs],
                [len(r["chosen"][0]) for r in pairs],
                [len(r["rejected"][0]) for r in pairs],
            )
    if ties:
        result["ties"] = rm_metrics.ties_score(_ties_rows(ties))
    result["batch_invariance_max_abs_diff"] = batch_invariance(reward, rows)
    return result
