"""The reward interface: anything that maps (prompts, responses) to one score per response,
and the checks every caller of a reward makes (``as_reward``, ``check_scores``)."""

from __future__ import annotations

import torch
from torch import Tensor


class RewardFunction:
    """Base class: ``reward(prompts, responses) -> (B,) float tensor``; subclass and implement.

    ``to(device)`` is called once before training with the policy's device; ``stats()`` may
    return numbers about the last call, which the RL stage logs as ``train/reward/<name>``.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> RewardFunction:
        return self

    def stats(self) -> dict[str, float]:
        return {}


class CallableReward(RewardFunction):
    """A plain function ``fn(prompts, responses) -> scores`` (a tensor or a list of floats) as
    a RewardFunction: what a notebook passes as ``reward=`` is wrapped in this."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.fn(prompts, responses)
        return scores if isinstance(scores, Tensor) else torch.tensor(scores, dtype=torch.float32)

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def as_reward(reward: object, field: str = "reward") -> RewardFunction:
    """``reward`` itself when it is a RewardFunction, a plain callable wrapped; else a TypeError
    naming ``field``."""
    if isinstance(reward, RewardFunction):
        return reward
    if callable(reward):
        return CallableReward(reward)
    raise TypeError(
        f"{field}: expected a RewardFunction or a callable (prompts, responses) -> scores, got "
        f"{type(reward).__name__} {reward!r}"
    )


def _name(source: object) -> str:
    return repr(source) if isinstance(source, CallableReward) else type(source).__name__


def reward_functions(reward: RewardFunction):
    """``reward`` and, for a sum or an ensemble, its members (recursively)."""
    yield reward
    for member in getattr(reward, "rewards", []):
        yield from reward_functions(member)


def check_scores(scores: Tensor, n: int, source: object, allow_nonfinite: bool = False) -> Tensor:
    """A reward must return n finite numbers; say which reward did not.

    ``allow_nonfinite`` lets NaN/Inf through for a caller that skips such a batch itself."""
    scores = (
        torch.as_tensor(scores, dtype=torch.float32).flatten()
        if not isinstance(scores, Tensor)
        else scores
    )
    if scores.shape != (n,):
        raise ValueError(
            f"reward {_name(source)} returned shape {tuple(scores.shape)}, expected ({n},)"
        )
    if not allow_nonfinite and not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).sum().item()
        raise ValueError(f"reward {_name(source)} returned {bad} non-finite scores (NaN or Inf)")
    return scores.float()
