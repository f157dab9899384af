"""Pure metrics of a reward model on preference data: pairwise and best-of-N accuracy, the
RewardBench 2 ties score, calibration of σ(r_w − r_l), and the pull of response length.

Scores in, floats out; the model runs elsewhere (``evaluation/reward_eval.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rlhf.evaluation.stats import Interval, bootstrap_mean, pearson


def pairwise_correct(margins: Tensor) -> Tensor:
    """(n,) 1.0 where the chosen response scored strictly higher (r_w − r_l > 0), else 0.0.

    A tie counts as wrong, as RewardBench counts it: a reward model that scores both responses
    alike has not told them apart.
    """
    return (torch.as_tensor(margins, dtype=torch.float64) > 0).double()


def best_of_n_correct(chosen: list[list[float]], rejected: list[list[float]]) -> Tensor:
    """(n,) 1.0 where every chosen completion outscores every rejected one: min(chosen) > max(rejected).

    RewardBench 2's layout gives each prompt one chosen and three rejected completions (best of
    four), so a random scorer is right a quarter of the time.
    """
    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected lists differ in number of prompts")
    out = []
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        if not c or not r:
            raise ValueError(f"row {i}: needs at least one chosen and one rejected completion")
        out.append(float(min(c) > max(r)))
    return torch.tensor(out, dtype=torch.float64)


@dataclass
class _PromptStats:
    accurate: bool
    correct_spread: float | None  # best − worst correct score; None with one correct answer
    correct_incorrect_margin: float  # worst correct − best incorrect


def _prompt_stats(correct: list[float], incorrect: list[float]) -> _PromptStats:
    spread = max(correct) - min(correct) if len(correct) > 1 else None
    margin = min(correct) - max(incorrect)
    return _PromptStats(margin > 0, spread, margin)


def ties_score(rows: list[dict]) -> dict[str, float]:
    """RewardBench 2's score of its Ties subset.

    Each row: ``kind`` ("ref": a prompt with one correct answer, or "tied": the same prompt id
    with several equally correct answers), ``prompt_id``, ``correct`` and ``incorrect`` (lists
    of scores). With acc_ref, acc_tied the shares of prompts whose worst correct answer beats the
    best incorrect one, and over prompt ids with both kinds whose tied spread s (best − worst
    correct) is defined: pref = share with margin_tied > s, hard = share with
    min(margin_ref, margin_tied) > s, m = mean of tanh(min(margin_ref, margin_tied)/s − 1) over
    s > 0:

        score = 0.3·acc_tied + 0.3·acc_ref + 0.2·pref + 0.2·hard + 0.01·m

    The correct answers should be scored alike, and further from the incorrect ones than from
    each other.
    """
    stats: dict[str, dict] = {"ref": {}, "tied": {}}
    for i, row in enumerate(rows):
        if row["kind"] not in stats:
            raise ValueError(f"ties row {i}: kind must be 'ref' or 'tied', got {row['kind']!r}")
        stats[row["kind"]][row["prompt_id"]] = _prompt_stats(row["correct"], row["incorrect"])
    ref, tied = stats["ref"], stats["tied"]

    def accuracy(group: dict) -> float:
        return sum(s.accurate for s in group.values()) / len(group) if group else 0.0

    common = [p for p in ref if p in tied and tied[p].correct_spread is not None]
    pref = [tied[p].correct_incorrect_margin > tied[p].correct_spread for p in common]
    hard_margin = {
        p: min(ref[p].correct_incorrect_margin, tied[p].correct_incorrect_margin) for p in common
    }
    hard = [hard_margin[p] > tied[p].correct_spread for p in common]
    ratios = [
        math.tanh(hard_margin[p] / tied[p].correct_spread - 1)
        for p in common
        if tied[p].correct_spread > 0
    ]
    out = {
        "accuracy_ref": accuracy(ref),
        "accuracy_tied": accuracy(tied),
        "correctness_preferred": sum(pref) / len(pref) if pref else 0.0,
        "correctness_preferred_hard": sum(hard) / len(hard) if hard else 0.0,
        "correctness_margin": sum(ratios) / len(ratios) if ratios else 0.0,
    }
    out["score"] = (
        0.3 * out["accuracy_tied"]
        + 0.3 * out["accuracy_ref"]
        + 0.2 * out["correctness_preferred"]
        + 0.2 * out["correctness_preferred_hard"]
        + 0.01 * out["correctness_margin"]
    )
    return out


def accuracy_by_subset(
    correct: Tensor, subsets: list[str] | None, seed: int = 0
) -> dict[str, Interval]:
    """Accuracy overall ("all") and per subset / category value, each with a bootstrap interval."""
    correct = torch.as_tensor(correct, dtype=torch.float64)
    out = {"all": bootstrap_mean(correct, seed=seed)}
    if subsets is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(subsets):
            groups[str(s)].append(i)
        for name in sorted(groups):
            out[name] = bootstrap_mean(correct[groups[name]], seed=seed)
    return out


def calibration(margins: Tensor, num_bins: int = 10) -> dict:
    """Reliability of σ(r_w − r_l) as the probability that the chosen response is preferred.

    The model's pick is the higher-scored response, its confidence c = σ(|r_w − r_l|) ∈ [½, 1).
    Pairs are binned by c into ``num_bins`` equal bins over [½, 1]; each bin's accuracy is the
    share of pairs whose pick was the chosen response. The expected calibration error is
    ECE = Σ_b (n_b / n)·|acc_b − conf_b|. A Bradley–Terry model that is calibrated has its
    accuracy equal to its confidence in every bin. Ties (margin 0) count as wrong picks at c = ½.
    """
    m = torch.as_tensor(margins, dtype=torch.float64).flatten()
    if m.numel() == 0:
        raise ValueError("no pairs to calibrate")
    conf = torch.sigmoid(m.abs())
    right = (m > 0).double()
    edges = torch.linspace(0.5, 1.0, num_bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # (n,) bin index 0..num_bins-1
    bins, ece = [], 0.0
    for b in range(num_bins):
        inside = which == b
        n_b = int(inside.sum())
        if n_b == 0:
            continue
        acc_b, conf_b = float(right[inside].mean()), float(conf[inside].mean())
        ece += n_b / m.numel() * abs(acc_b - conf_b)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n_b,
                "confidence": conf_b,
                "accuracy": acc_b,
            }
        )
    return {"bins": bins, "ece": ece}


def length_bias(
    chosen_scores, rejected_scores, chosen_lengths, rejected_lengths
) -> dict[str, float]:
    """How much the reward follows response length.

    ``reward_length_corr``: Pearson correlation of the reward with the length over every scored
    response; ``margin_length_corr``: of the margin r_w − r_l with the length difference;
    ``longer_preferred``: share of pairs of different lengths where the longer one scored higher
    (½ means length does not decide).
    """
    cs, rs = torch.as_tensor(chosen_scores).double(), torch.as_tensor(rejected_scores).double()
    cl, rl = torch.as_tensor(chosen_lengths).double(), torch.as_tensor(rejected_lengths).double()
    differ = cl != rl
    longer_wins = ((cs > rs) == (cl > rl)) & differ
    return {
        "reward_length_corr": pearson(torch.cat([cs, rs]), torch.cat([cl, rl])),
        "margin_length_corr": pearson(cs - rs, cl - rl),
        "longer_preferred": float(longer_wins.sum() / differ.sum()) if differ.any() else 0.5,
    }


def histogram(values: Tensor, num_bins: int = 20) -> dict[str, list[float]]:
    """Counts of ``values`` in ``num_bins`` equal bins between their min and max."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        hi = lo + 1.0
    counts = torch.histc(v, bins=num_bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": counts.tolist()}
