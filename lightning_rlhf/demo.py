"""The pipeline demo on the embedded defaults: each stage through the real CLI, then its score.

python -m lightning_rlhf demo            # from the repository root
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# (stage, configs read in order, policy evaluated after it: None for the reward model)
STAGES = [
    ("sft", ["configs/sft.yaml"], "artifacts/sft"),
    ("reward", ["configs/reward.yaml"], None),
    ("ppo", ["configs/ppo.yaml"], "artifacts/ppo"),
    # the other methods, each from the SFT export on the same data (the README's method table:
    # python -m lightning_rlhf demo --stages sft,reward,ppo,grpo,rloo,dpo,grpo_verifiable); the
    # RL ones are overlays of configs/ppo.yaml
    ("grpo", ["configs/ppo.yaml", "configs/grpo.yaml"], "artifacts/grpo"),
    ("rloo", ["configs/ppo.yaml", "configs/rloo.yaml"], "artifacts/rloo"),
    ("dpo", ["configs/dpo.yaml"], "artifacts/dpo"),
    (
        "grpo_verifiable",
        ["configs/ppo.yaml", "configs/grpo_verifiable.yaml"],
        "artifacts/grpo_verifiable",
    ),
]
DEFAULT_STAGES = "sft,reward,ppo"


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run_pipeline(wanted: list[str], seed: int | None = None) -> dict:
    """Fit each wanted stage through the CLI (``seed`` overrides the configs' ``seed_everything``)
    and score each stage's policy; the summary: oracle scores, seconds, the reward model's
    accuracy and PPO's last KL."""
    from lightning_rlhf.evaluate import evaluate_policy

    py = sys.executable
    if not Path("artifacts/tiny-base").is_dir():
        _run([py, "-m", "lightning_rlhf", "init-model", "artifacts/tiny-base"])
    if not Path("artifacts/task/prompts_val.jsonl").exists():
        _run([py, "-m", "lightning_rlhf", "make-data", "artifacts/task"])
    scores = {"base": evaluate_policy("artifacts/tiny-base", "artifacts/task/prompts_val.jsonl")}
    times: dict[str, float] = {}
    seeding = [] if seed is None else ["--seed_everything", str(seed)]
    for stage, configs, policy in STAGES:
        if stage not in wanted:
            continue
        start = time.perf_counter()
        configs_args = [a for c in configs for a in ("--config", c)]
        _run([py, "-m", "lightning_rlhf", "fit", *configs_args, *seeding])
        times[stage] = time.perf_counter() - start
        if policy is not None:
            scores[stage] = evaluate_policy(policy, "artifacts/task/prompts_val.jsonl")
    summary: dict = {"seed": seed, "oracle_score": scores, "seconds": times}
    if "ppo" in times and Path("artifacts/ppo/ppo_stats.json").exists():
        last = json.loads(Path("artifacts/ppo/ppo_stats.json").read_text())
        keys = {"kl": "kl_k1", "kl_k3": "kl_k3", "beta": "beta", "reward": "reward"}
        summary["ppo_last_iteration"] = {k: last.get(f"train/{v}") for k, v in keys.items()}
    if "reward" in times:
        stats = json.loads(Path("artifacts/rm/reward_stats.json").read_text())
        summary["reward_accuracy"] = stats.get("val_accuracy")
    return summary


def print_summary(summary: dict) -> None:
    """The stage table: oracle score per task, gain over SFT, wall time; PPO's KL."""
    scores, times = summary["oracle_score"], summary["seconds"]
    sft = scores.get("sft", {}).get("all")
    print(
        "\nstage           oracle score on held-out prompts (greedy)      gain over SFT   wall time"
    )
    for stage in ["base", *times]:
        secs = f"{times[stage]:.0f} s" if stage in times else "-"
        if stage in scores:
            s = scores[stage]
            per_task = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k != "all")
            gain = (
                f"{s['all'] - sft:+.3f}" if sft is not None and stage not in ("base", "sft") else ""
            )
            print(f"{stage:<15} {s['all']:.3f} ({per_task})    {gain:>13}   {secs:>9}")
        else:
            acc = summary.get("reward_accuracy") or float("nan")
            print(
                f"{stage:<15} reward model: pairwise accuracy {acc:.3f} on held-out pairs   {secs:>25}"
            )
    if "ppo_last_iteration" in summary:
        last = summary["ppo_last_iteration"]
        print(
            f"ppo: KL(π‖πref) {last['kl']:.3f} nats per response (k3 {last['kl_k3']:.3f}), "
            f"β {last['beta']:.3f} at the last iteration"
        )


def seeds_table(summaries: list[dict]) -> str:
    """Markdown: per stage, the median and range over the runs of each score, gain and time."""
    from statistics import median

    def cell(values: list[float], fmt: str) -> str:
        if not values:
            return "–"
        lo, mid, hi = min(values), median(values), max(values)
        return f"{mid:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"

    seeds = ", ".join(str(s["seed"]) for s in summaries)
    lines = [
        f"| stage | oracle score, median (range) over seeds {seeds} | gain over SFT | wall time (s) |",
        "|---|---|---|---|",
    ]
    for stage in ["base", *summaries[0]["seconds"]]:
        secs = cell([s["seconds"][stage] for s in summaries if stage in s["seconds"]], ".0f")
        if stage == "reward":
            acc = cell([s["reward_accuracy"] for s in summaries], ".3f")
            lines.append(f"| reward model | pairwise accuracy {acc} | | {secs} |")
            continue
        score = [s["oracle_score"][stage]["all"] for s in summaries]
        gains = [
            s["oracle_score"][stage]["all"] - s["oracle_score"]["sft"]["all"]
            for s in summaries
            if stage not in ("base", "sft") and "sft" in s["oracle_score"]
        ]
        lines.append(f"| {stage} | {cell(score, '.3f')} | {cell(gains, '+.3f')} | {secs} |")
    kls = [s["ppo_last_iteration"]["kl"] for s in summaries if "ppo_last_iteration" in s]
    if kls:
        lines += [
            "",
            f"PPO's KL(π‖πref) at its last iteration: {cell(kls, '.3f')} nats per response.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="lightning_rlhf demo", description=__doc__)
    p.add_argument(
        "--stages",
        default=DEFAULT_STAGES,
        help=f"comma-separated, among {','.join(s[0] for s in STAGES)} (run in that order)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds (e.g. 0,1,2): the whole pipeline once per seed, then "
        "a table of medians and ranges (runs/demo/seeds.md); default: the configs' seed",
    )
    p.add_argument("--out", default="runs/demo", help="where the summary is written")
    a = p.parse_args(argv)
    wanted = a.stages.split(",")
    unknown = set(wanted) - {s[0] for s in STAGES}
    if unknown:
        p.error(f"--stages: unknown {sorted(unknown)}; choose among {[s[0] for s in STAGES]}")
    try:
        seeds = [None] if a.seeds is None else [int(x) for x in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {a.seeds!r}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for seed in seeds:
        summary = run_pipeline(wanted, seed)
        summaries.append(summary)
        name = "summary.json" if seed is None else f"summary_seed{seed}.json"
        (out / name).write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary)
    from lightning_rlhf.report import write_report

    report = write_report(summaries[-1], "runs", out)
    print(f"summary written to {out / name}; report with plots (the last run's): {report}")
    if a.seeds is not None:
        table = seeds_table(summaries)
        (out / "seeds.md").write_text(table)
        print("\n" + table + f"written to {out / 'seeds.md'}")
    return summaries[-1]
