"""``python -m lightning_rlhf evaluate`` and ``evaluate-rm``: the command lines of evaluation.

python -m lightning_rlhf evaluate artifacts/ppo --against artifacts/sft --reward artifacts/rm
python -m lightning_rlhf evaluate-rm artifacts/rm --data artifacts/task/rewardbench_val.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def _sampling(a):
    from lightning_rlhf.rollout import SamplingOptions

    return SamplingOptions(
        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p
    )


def _warn_if_retokenised(policy: str, reward_specs: list[str]) -> None:
    """A reward model with another tokenizer scores the decoded text, not the policy's tokens."""
    from pathlib import Path

    from lightning_rlhf.models import check_same_tokenizer

    for spec in reward_specs:
        if Path(spec).is_dir():
            try:
                check_same_tokenizer(policy, spec, "reward model")
            except ValueError:
                log.warning(
                    "reward model %s has another tokenizer than %s: it scores the decoded text, "
                    "re-tokenised with its own tokenizer",
                    spec,
                    policy,
                )


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning_rlhf evaluate",
        description="Score a policy on prompts with a reward (the bundled oracle by default); "
        "with --against, the win rate of one policy over another.",
    )
    p.add_argument("policy", help="policy directory or hub name (a causal LM)")
    p.add_argument("--against", help="a second policy: report the first one's win rate over it")
    p.add_argument(
        "--prompts",
        default="artifacts/task/prompts_val.jsonl",
        help="prompts (a prompt column or chat messages; file, directory or hub name)",
    )
    p.add_argument(
        "--reward",
        action="append",
        help="'oracle' (default), a reward-model directory, or module:function; repeat for the "
        "mean of several",
    )
    p.add_argument("--samples", type=int, default=1, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--tie-margin", type=float, default=0.0, help="|Δscore| at most this is a tie")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write summary.json, records.jsonl and report.md")
    return p


def _print_policy_summary(s: dict) -> None:
    """Each policy's score and, with ``--against``, the win rates, with their intervals."""
    for side in ("policy", "against"):
        if side in s:
            score = s[side]["score"]
            print(
                f"{s[side]['model']}: score {score['value']:.3f} "
                f"[{score['low']:.3f}, {score['high']:.3f}] over {s['num_prompts']} prompts"
            )
    if "win_rate" in s:
        w, lc = s["win_rate"], s["length_controlled_win_rate"]
        print(
            f"win rate {w['win_rate']['value']:.3f} [{w['win_rate']['low']:.3f}, "
            f"{w['win_rate']['high']:.3f}] ({w['wins']} wins, {w['ties']} ties, {w['losses']} "
            f"losses); length-controlled {lc['value']:.3f} [{lc['low']:.3f}, {lc['high']:.3f}]"
        )


def evaluate_main(argv: list[str] | None = None) -> dict:
    from lightning_rlhf.evaluation.policy_eval import evaluate_policies
    from lightning_rlhf.evaluation.report import policy_report

    a = _evaluate_parser().parse_args(argv)
    rewards = a.reward or ["oracle"]
    _warn_if_retokenised(a.policy, rewards)
    result = evaluate_policies(
        a.policy,
        a.prompts,
        reward=rewards,
        against=a.against,
        sampling=_sampling(a),
        samples_per_prompt=a.samples,
        limit=a.limit,
        max_prompt_length=a.max_prompt_length,
        tie_margin=a.tie_margin,
        seed=a.seed,
    )
    s = result.summary
    _print_policy_summary(s)
    if a.out:
        result.write(a.out)
        print(f"wrote {policy_report(s, result.records, a.out)}")
    print(json.dumps(s))
    return s


def evaluate_rm_main(argv: list[str] | None = None) -> dict:
    from lightning_rlhf.evaluation.policy_eval import parse_reward
    from lightning_rlhf.evaluation.report import reward_report
    from lightning_rlhf.evaluation.reward_eval import evaluate_reward_model

    p = argparse.ArgumentParser(
        prog="lightning_rlhf evaluate-rm",
        description="A reward model's accuracy (overall, per subset, best-of-N), RewardBench 2 "
        "ties score, calibration and length bias on a preference file.",
    )
    p.add_argument("reward", help="a reward-model directory (or module:function)")
    p.add_argument(
        "--data",
        default="artifacts/task/pairs_val.jsonl",
        help="preference file: prompt/chosen/rejected (+ subset), RewardBench v1 or v2 layout",
    )
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--chosen-column", default="chosen")
    p.add_argument("--rejected-column", default="rejected")
    p.add_argument("--subset-column", default="subset")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write result.json and report.md (with plots)")
    a = p.parse_args(argv)
    result = evaluate_reward_model(
        parse_reward(a.reward),
        a.data,
        batch_size=a.batch_size,
        limit=a.limit,
        seed=a.seed,
        prompt_column=a.prompt_column,
        chosen_column=a.chosen_column,
        rejected_column=a.rejected_column,
        subset_column=a.subset_column,
    )
    for name, acc in result.get("accuracy", {}).items():
        print(
            f"accuracy {name}: {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] n={acc['n']}"
        )
    if "ties" in result:
        print(f"ties score: {result['ties']['score']:.3f}")
    if "calibration" in result:
        print(f"calibration error (ECE): {result['calibration']['ece']:.3f}")
    if a.out:
        from pathlib import Path

        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {reward_report(result, a.out, a.reward)}")
    print(json.dumps(result))
    return result
