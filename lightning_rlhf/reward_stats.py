"""``reward_stats.json``: the mean and std of a reward model's validation rewards, which
``RewardModel`` normalises its scores with. Checked where the reward stage writes it and where
a reward reads it, so that a degenerate std never multiplies the RL stage's rewards."""

from __future__ import annotations

import json
import math
from pathlib import Path

# The smallest std of the validation rewards that normalisation divides by, relative to the
# rewards' scale max(1, |mean|). A reward model's float32 scores carry ~7 significant digits and
# bf16's ~3: below 1e-4 of the scale, dividing by the std amplifies the rounding of one score by
# 1e4 or more, so the normalised rewards are mostly noise and run to magnitudes of 1e3 to 1e6
# (a std of 3.8e-9, written by the reward stage on degenerate data, gave PPO rewards of -1.1e5).
# A reward model that ranks anything spreads its scores by ~0.1 to 1, far above it.
MIN_RELATIVE_STD = 1e-4


READ_FIX = "the reward's normalize: false scores without it"


def check_reward_stats(stats: object, where: str, fix: str = READ_FIX) -> tuple[float, float]:
    """(mean, std) of a ``reward_stats.json`` mapping, or a ValueError naming ``where``, the key
    and ``fix``: both must be finite numbers, std at least ``MIN_RELATIVE_STD`` × max(1, |mean|)."""
    if not isinstance(stats, dict):
        raise ValueError(
            f'{where}: expected a JSON object {{"mean": ..., "std": ...}}, got '
            f"{type(stats).__name__}; {fix}"
        )
    values = []
    for key in ("mean", "std"):
        if key not in stats:
            raise ValueError(
                f"{where}: no '{key}' key (its keys: {sorted(stats)}); the reward stage writes "
                f"mean and std of its validation rewards; {fix}"
            )
        value = stats[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where}: '{key}' must be a finite number, got {value!r:.40}; {fix}")
        values.append(float(value))
    mean, std = values
    floor = MIN_RELATIVE_STD * max(1.0, abs(mean))
    if std < floor:
        raise ValueError(
            f"{where}: std {std:.3g} is below {floor:.3g} ({MIN_RELATIVE_STD:g} x max(1, |mean| = "
            f"{abs(mean):.3g})): the reward model scores the validation pairs (almost) alike, and "
            f"dividing by it would blow the rewards up to noise; {fix}"
        )
    return mean, std


def read_reward_stats(path: Path) -> tuple[float, float]:
    """(mean, std) read from a reward model's ``reward_stats.json``, checked."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f'{path}: not valid JSON ({err}); it should hold {{"mean": ..., "std": ...}} as the '
            f"reward stage writes it; {READ_FIX}"
        ) from None
    return check_reward_stats(stats, str(path))
