"""The random-number state a resumed RL run needs to draw the same samples as the run it resumes
(the torch, Python and CUDA generators), saved in and restored from a checkpoint."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """The generators' states, for ``checkpoint["rng"]``."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; CUDA's only where CUDA is (and as many devices are)."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(rng["cuda"])
