"""The bundled task's oracle score of an exported policy, overall and per task (the demo's).

For any policy, prompts and reward, with intervals and win rates, see ``lightning_rlhf.evaluation``
(``python -m lightning_rlhf evaluate``).
"""

from __future__ import annotations

from collections import defaultdict

from lightning_rlhf.data.load import load_split, require_columns
from lightning_rlhf.rewards import RewardFunction, TaskOracle
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions


def answer_prompts(
    model_dir: str,
    prompts: list[str],
    sampling: SamplingOptions | None = None,
    batch_size: int = 256,
    progress: bool = True,
    rollout: RolloutEngine | None = None,
) -> list[str]:
    """The policy's answer to each prompt, in order (greedy, 8 new tokens by default), sampled by
    ``rollout`` (None: ``HFRollout()``) from the torch random stream as it is.

    Shows a progress bar with the rate in prompts/s on stderr unless ``progress`` is False.
    """
    from lightning_rlhf.evaluation.policy_eval import sample_responses

    sampling = sampling or SamplingOptions(max_new_tokens=8, temperature=0.0)
    rows = [{"prompt": p} for p in prompts]
    responses = sample_responses(model_dir, rows, sampling, 1, batch_size, None, rollout, progress)
    return [r[0]["response"] for r in responses]


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
