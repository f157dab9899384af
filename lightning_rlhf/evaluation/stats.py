"""Pure statistics of evaluation: bootstrap intervals, pairwise win rates, length control.

Plain tensors in, floats out; no models. Every interval is a percentile bootstrap over prompts
(the unit that was sampled), with a fixed generator so a report can be reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def _as_tensor(values) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("no values to summarise (an empty prompt set?)")
    return t


def bootstrap_indices(n: int, num_resamples: int, seed: int) -> Tensor:
    """(num_resamples, n) row indices drawn with replacement, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (num_resamples, n), generator=gen)


@dataclass
class Interval:
    """A point estimate with its bootstrap interval (``level`` of the mass, e.g. 0.95)."""

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0

    def __str__(self) -> str:
        pct = round(self.level * 100)
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] ({pct}% CI, n={self.n})"

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile_interval(estimate: float, resampled: Tensor, level: float, n: int) -> Interval:
    """The ``level`` central interval of the resampled estimates (linear interpolation)."""
    alpha = (1.0 - level) / 2
    q = torch.quantile(resampled.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(estimate), float(q[0]), float(q[1]), level, n)


def bootstrap_mean(
    values, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of ``values`` (one per prompt) with a percentile-bootstrap interval.

    mean = Σ v_i / n; each resample draws n prompts with replacement and takes their mean.
    """
    v = _as_tensor(values)
    idx = bootstrap_indices(v.numel(), num_resamples, seed)
    return percentile_interval(v.mean().item(), v[idx].mean(dim=1), level, v.numel())


def preferences(scores_a, scores_b, tie_margin: float = 0.0) -> Tensor:
    """(n,) per-prompt preference for A over B: 1 (A wins), 0.5 (tie), 0 (B wins).

    A tie is |s_A − s_B| ≤ ``tie_margin`` (0: only exactly equal scores tie, as a 0/1 verifier
    gives often).
    """
    a, b = _as_tensor(scores_a), _as_tensor(scores_b)
    if a.shape != b.shape:
        raise ValueError(f"scores of A ({a.numel()}) and B ({b.numel()}) differ in number")
    diff = a - b
    out = torch.full_like(diff, 0.5)
    out[diff > tie_margin] = 1.0
    out[diff < -tie_margin] = 0.0
    return out


@dataclass
class WinRate:
    """A against B: counts and the win rate (wins + ½ ties) / n with its interval."""

    wins: int
    ties: int
    losses: int
    win_rate: Interval

    def as_dict(self) -> dict:
        return {
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "win_rate": self.win_rate.as_dict(),
        }


def win_rate(
    scores_a,
    scores_b,
    tie_margin: float = 0.0,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A over B from paired per-prompt scores (a tie counts one half)."""
    pref = preferences(scores_a, scores_b, tie_margin)
    return WinRate(
        wins=int((pref == 1).sum()),
        ties=int((pref == 0.5).sum()),
        losses=int((pref == 0).sum()),
        win_rate=bootstrap_mean(pref, num_resamples, level, seed),
    )


def logistic_fit(x: Tensor, y: Tensor, steps: int = 50, ridge: float = 1e-6) -> Tensor:
    """(2,) intercept and slope of P(y=1) = σ(w0 + w1·x), by Newton's method (IRLS).

    ``y`` may hold halves (ties): the log-likelihood y·log p + (1−y)·log(1−p) is still concave.
    A tiny ridge keeps the Newton step defined when the data separate perfectly.
    """
    X = torch.stack([torch.ones_like(x), x], dim=1).double()  # (n, 2)
    y = y.double()
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (y - p) - ridge * w
        hess = (X * (p * (1 - p)).unsqueeze(1)).T @ X + ridge * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w + step
        if step.abs().max() < 1e-10:
            break
    return w


def length_controlled_win_rate(
    scores_a,
    scores_b,
    lengths_a,
    lengths_b,
    tie_margin: float = 0.0,
    num_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The win rate A would have at equal response lengths: σ(w0) of the logistic regression of
    the per-prompt preference on the length difference, P(A ≻ B) = σ(w0 + w1·(ℓ_A − ℓ_B)/s),
    with s the standard deviation of the length differences (1 when they are all equal).

    Length is the usual reward hack: a policy that wins only by writing longer answers has a
    high raw win rate and a length-controlled one near ½.
    """
    pref = preferences(scores_a, scores_b, tie_margin)
    dl = _as_tensor(lengths_a) - _as_tensor(lengths_b)
    if dl.shape != pref.shape:
        raise ValueError("lengths and scores differ in number")
    scale = dl.std().item() if dl.numel() > 1 and dl.std().item() > 0 else 1.0
    x = dl / scale
    estimate = torch.sigmoid(logistic_fit(x, pref)[0]).item()
    idx = bootstrap_indices(pref.numel(), num_resamples, seed)
    resampled = torch.stack([torch.sigmoid(logistic_fit(x[i], pref[i])[0]) for i in idx])
    return percentile_interval(estimate, resampled, level, pref.numel())


def win_rate_by_length(
    scores_a, scores_b, lengths_a, lengths_b, edges=(-8, -2, 2, 8), tie_margin: float = 0.0
) -> list[dict]:
    """Win rate within buckets of the length difference ℓ_A − ℓ_B, cut at ``edges``.

    Returns one row per non-empty bucket: its label, count and win rate.
    """
    pref = preferences(scores_a, scores_b, tie_margin)
    dl = _as_tensor(lengths_a) - _as_tensor(lengths_b)
    bounds = [float("-inf"), *map(float, edges), float("inf")]
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inside = (dl >= lo) & (dl < hi)
        if inside.any():
            rows.append(
                {
                    "bucket": f"[{lo:g}, {hi:g})",
                    "n": int(inside.sum()),
                    "win_rate": float(pref[inside].mean()),
                }
            )
    return rows


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length series; 0.0 when either is constant."""
    a, b = _as_tensor(x), _as_tensor(y)
    if a.shape != b.shape:
        raise ValueError("the two series differ in length")
    a, b = a - a.mean(), b - b.mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if denom > 0 else 0.0
