"""Evaluate any policy on any prompts with any reward; compare two policies by win rate.

From Python (a notebook) or through ``python -m lightning_rlhf evaluate``:

    result = evaluate_policies("artifacts/ppo", "artifacts/task/prompts_val.jsonl",
                               reward="artifacts/rm", against="artifacts/sft")
    print(result.summary["win_rate"])

Prompts are read by the RL stage's own ``PromptDataModule`` (a prompt column or chat
``messages``, a local file or a hub name), responses are sampled with the same sampler and
``SamplingOptions`` as training, and scored by a ``RewardFunction``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_rlhf.evaluation import stats
from lightning_rlhf.rewards import RewardEnsemble, RewardFunction, TaskOracle, as_reward
from lightning_rlhf.rollout import RolloutEngine, SamplingOptions


def parse_reward(spec: str | RewardFunction | list) -> RewardFunction:
    """A reward from the command line's words.

    ``oracle``: the bundled task's checker; a directory: a reward model export (``RewardModel``);
    ``package.module:function``: a Python function ``f(prompts, responses) -> scores`` (the module
    is imported: name only code you trust); a list: the members' mean (``RewardEnsemble``).
    """
    if isinstance(spec, RewardFunction):
        return spec
    if isinstance(spec, (list, tuple)):
        if len(spec) == 1:
            return parse_reward(spec[0])
        return RewardEnsemble([parse_reward(s) for s in spec])
    if callable(spec):
        return as_reward(spec)
    if spec == "oracle":
        return TaskOracle()
    if Path(spec).is_dir():
        from lightning_rlhf.rewards import RewardModel

        return RewardModel(spec)
    if ":" in spec and not Path(spec).exists():
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"--reward {spec}: cannot import {name} from {module}: {err}") from err
        return as_reward(fn, "--reward")
    raise ValueError(
        f"--reward {spec!r}: not 'oracle', a reward-model directory, nor module:function"
    )


def load_prompts(
    path: str,
    tokenizer_dir: str,
    max_prompt_length: int = 256,
    limit: int | None = None,
    prompt_column: str = "prompt",
    messages_column: str = "messages",
    group_column: str = "task",
) -> list[dict]:
    """Prompt rows as the RL stage reads them: {"prompt", "prompt_ids"} (+ "group" when the
    file has ``group_column``, e.g. the bundled task's ``task``)."""
    from lightning_rlhf.data.load import load_split
    from lightning_rlhf.data.prompts import PromptDataModule

    dm = PromptDataModule(
        train_path=path,
        val_path=path,
        tokenizer=tokenizer_dir,
        prompt_column=prompt_column,
        messages_column=messages_column,
        max_prompt_length=max_prompt_length,
        batch_size=1,
    )
    dm.setup("validate")
    rows = list(dm.val_set)
    raw = load_split(path)
    if group_column in raw.column_names and len(raw) == len(rows):
        for row, group in zip(rows, raw[group_column]):
            row["group"] = str(group)
    return rows[:limit]


@torch.no_grad()
def sample_responses(
    model_dir: str,
    rows: list[dict],
    sampling: SamplingOptions,
    samples_per_prompt: int = 1,
    batch_size: int = 64,
    seed: int | None = 0,
    rollout: RolloutEngine | None = None,
    progress: bool = False,
) -> list[list[dict]]:
    """Per prompt row, ``samples_per_prompt`` responses: {"response", "length" (tokens)}, sampled by
    ``rollout`` (None: ``HFRollout()``), the engine the stages train with.

    A row is {"prompt", "prompt_ids"} as ``load_prompts`` gives, or just {"prompt"}: the text is
    then encoded with the policy's tokenizer. ``seed`` seeds torch first (None: the stream as it
    is). ``progress`` shows a bar with the rate in prompts/s on stderr.
    """
    import sys

    from tqdm import tqdm

    from lightning_rlhf.data.collate import collate_prompts
    from lightning_rlhf.data.text import encode_prompt
    from lightning_rlhf.models import load_causal_lm, load_tokenizer
    from lightning_rlhf.rollout import HFRollout, decode_responses

    if seed is not None:
        torch.manual_seed(seed)
    try:
        tokenizer = load_tokenizer(model_dir)
        model = load_causal_lm(model_dir).eval()
    except Exception as err:
        raise ValueError(
            f"policy {model_dir!r} could not be loaded ({type(err).__name__}: {err}); pass the "
            "directory a stage exported (config.json, weights, tokenizer)"
        ) from err
    engine = (rollout or HFRollout()).bind(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    rows = [
        r if "prompt_ids" in r else r | {"prompt_ids": encode_prompt(tokenizer, r["prompt"])}
        for r in rows
    ]
    flat = [r for r in rows for _ in range(samples_per_prompt)]
    bar = tqdm(
        total=len(rows),
        desc=f"answering ({model_dir})",
        unit="prompt",
        file=sys.stderr,
        disable=not progress,
    )
    out: list[dict] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        batch = collate_prompts(chunk, tokenizer.pad_token_id)  # (b, P) left-padded
        gen = engine.generate(batch.input_ids, batch.attention_mask, sampling)
        texts = decode_responses(tokenizer, gen.response_ids, gen.response_mask)
        lengths = gen.response_mask.sum(dim=1).tolist()
        out += [{"response": t, "length": int(n)} for t, n in zip(texts, lengths)]
        bar.update(len(chunk) / samples_per_prompt)
    bar.close()
    k = samples_per_prompt
    return [out[i * k : (i + 1) * k] for i in range(len(rows))]


def score_responses(
    reward: RewardFunction, rows: list[dict], responses: list[list[dict]], batch_size: int = 256
) -> None:
    """Add "score" to each response dict, scoring in batches as the RL stage does."""
    from lightning_rlhf.rewards import check_scores

    flat = [(row["prompt"], r) for row, rs in zip(rows, responses) for r in rs]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        scores = check_scores(
            reward([p for p, _ in chunk], [r["response"] for _, r in chunk]), len(chunk), reward
        )
        for (_, r), s in zip(chunk, scores.tolist()):
            r["score"] = s


@dataclass
class EvaluationResult:
    """What ``evaluate_policies`` found: ``summary`` (JSON-ready) and one record per prompt."""

    summary: dict
    records: list[dict] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> Path:
        """``summary.json`` and ``records.jsonl`` under ``out_dir``; returns the directory."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        with (out / "records.jsonl").open("w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        return out


def _per_prompt_mean(responses: list[list[dict]], key: str) -> list[float]:
    return [sum(r[key] for r in rs) / len(rs) for rs in responses]


def _policy_summary(rows, responses, seed: int) -> dict:
    scores = _per_prompt_mean(responses, "score")
    summary = {
        "score": stats.bootstrap_mean(scores, seed=seed).as_dict(),
        "length": sum(_per_prompt_mean(responses, "length")) / len(rows),
    }
    groups = sorted({r["group"] for r in rows if "group" in r})
    if groups:
        summary["by_group"] = {
            g: sum(s for s, r in zip(scores, rows) if r.get("group") == g)
            / sum(r.get("group") == g for r in rows)
            for g in groups
        }
    return summary


def evaluate_policies(
    policy: str,
    prompts: str,
    reward: str | RewardFunction | list = "oracle",
    against: str | None = None,
    sampling: SamplingOptions | None = None,
    samples_per_prompt: int = 1,
    limit: int | None = None,
    max_prompt_length: int = 256,
    tie_margin: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    rollout: RolloutEngine | None = None,
) -> EvaluationResult:
    """Score ``policy`` (and ``against``) on ``prompts`` with ``reward``.

    The summary holds each policy's mean score over prompts with a bootstrap 95 % interval (a
    prompt's score is the mean over its samples), mean length in tokens, per-group means; with
    ``against``, the win rate of ``policy`` over it (per-prompt mean scores compared; a tie within
    ``tie_margin`` counts ½), the length-controlled win rate and win rates by length difference.
    ``rollout`` samples (None: ``HFRollout()``).
    """
    sampling = sampling or SamplingOptions(max_new_tokens=8, temperature=0.0)
    reward_fn = parse_reward(reward)
    rows = load_prompts(prompts, policy, max_prompt_length, limit)
    sides = {"policy": policy} if against is None else {"policy": policy, "against": against}
    responses = {}
    for side, model_dir in sides.items():
        responses[side] = sample_responses(
            model_dir, rows, sampling, samples_per_prompt, batch_size, seed, rollout
        )
        score_responses(reward_fn, rows, responses[side])
    summary: dict = {
        "prompts": prompts,
        "num_prompts": len(rows),
        "samples_per_prompt": samples_per_prompt,
        "reward": str(reward),
        **{side: {"model": sides[side], **_policy_summary(rows, responses[side], seed)}
           for side in sides},
    }  # fmt: skip
    if against is not None:
        a, b = (_per_prompt_mean(responses[s], "score") for s in ("policy", "against"))
        la, lb = (_per_prompt_mean(responses[s], "length") for s in ("policy", "against"))
        summary["win_rate"] = stats.win_rate(a, b, tie_margin, seed=seed).as_dict()
        summary["length_controlled_win_rate"] = stats.length_controlled_win_rate(
            a, b, la, lb, tie_margin, seed=seed
        ).as_dict()
        summary["win_rate_by_length"] = stats.win_rate_by_length(
            a, b, la, lb, tie_margin=tie_margin
        )
    records = []
    for i, row in enumerate(rows):
        record = {"prompt": row["prompt"], **({"group": row["group"]} if "group" in row else {})}
        for side in sides:
            record[side] = responses[side][i]
        records.append(record)
    return EvaluationResult(summary, records)
