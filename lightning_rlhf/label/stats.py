"""Agreement between annotators: raw agreement, Cohen's kappa (two), Fleiss' kappa (any number).

Pure functions over category labels (any hashable: here "a", "b", "tie", "both_bad"). A kappa
whose chance agreement is 1 (everyone always used one category) is undefined: NaN.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict


def item_agreement(ratings: list) -> float:
    """Share of agreeing rater pairs on one item: ``P_i = Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1))``
    with n_ij the raters who chose category j and n_i >= 2 the item's raters."""
    n = len(ratings)
    if n < 2:
        raise ValueError(f"agreement needs at least 2 ratings of an item, got {n}")
    return sum(c * (c - 1) for c in Counter(ratings).values()) / (n * (n - 1))


def raw_agreement(items: list[list]) -> float:
    """Mean of ``item_agreement`` over the items rated at least twice (NaN when there are none).
    With two raters this is the share of items they labelled alike."""
    rated = [r for r in items if len(r) >= 2]
    return sum(map(item_agreement, rated)) / len(rated) if rated else math.nan


def cohen_kappa(x: list, y: list) -> float:
    """Cohen's kappa of two raters over the same items: ``κ = (p_o − p_e) / (1 − p_e)`` with
    ``p_o`` the share of items they agree on and ``p_e = Σ_k p_x(k) p_y(k)`` from each rater's own
    category frequencies."""
    if len(x) != len(y) or not x:
        raise ValueError(f"cohen_kappa needs two equal, non-empty lists, got {len(x)} and {len(y)}")
    n = len(x)
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[k] * cy[k] for k in cx) / (n * n)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(items: list[list]) -> float:
    """Fleiss' kappa over items rated at least twice (rater counts may differ between items):
    ``κ = (P̄ − P_e) / (1 − P_e)`` with ``P̄`` the mean ``item_agreement``,
    ``p_j = Σ_i n_ij / Σ_i n_i`` and ``P_e = Σ_j p_j²``."""
    rated = [r for r in items if len(r) >= 2]
    if not rated:
        return math.nan
    p_bar = sum(map(item_agreement, rated)) / len(rated)
    totals = Counter(itertools.chain.from_iterable(rated))
    n = sum(totals.values())
    p_e = sum((c / n) ** 2 for c in totals.values())
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def agreement_report(labels: list[dict]) -> dict:
    """Agreement over live labels ({"pair_id", "annotator", "choice"} each): the number of pairs
    labelled by two or more annotators, raw agreement and Fleiss' kappa on them, and Cohen's
    kappa for every two annotators who share at least one pair ("alice|bob": {"pairs", "kappa"})."""
    by_pair: dict[int, dict[str, str]] = defaultdict(dict)
    for row in labels:
        by_pair[row["pair_id"]][row["annotator"]] = row["choice"]
    items = [list(v.values()) for v in by_pair.values() if len(v) >= 2]
    names = sorted({row["annotator"] for row in labels})
    cohen = {}
    for x, y in itertools.combinations(names, 2):
        shared = [v for v in by_pair.values() if x in v and y in v]
        if shared:
            kappa = cohen_kappa([v[x] for v in shared], [v[y] for v in shared])
            cohen[f"{x}|{y}"] = {"pairs": len(shared), "kappa": kappa}
    return {
        "overlapping_pairs": len(items),
        "raw_agreement": raw_agreement(items),
        "fleiss_kappa": fleiss_kappa(items),
        "cohen_kappa": cohen,
    }


def json_safe(value):
    """``value`` with NaN (an undefined kappa, no overlap yet) as None, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value
