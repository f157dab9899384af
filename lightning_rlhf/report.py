"""The pipeline report: a Markdown page with the stage scores and PNG plots of each stage's curves.

Reads the CSV logs the shipped configs write (``runs/<stage>/csv/version_*/metrics.csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path

# (stage, metric, title) plotted against the logged step when present
CURVES = [
    ("sft", "train/loss", "SFT: training loss"),
    ("sft", "val/oracle_score", "SFT: oracle score, held-out prompts"),
    ("reward", "train/loss", "Reward model: Bradley–Terry loss"),
    ("reward", "val/accuracy", "Reward model: pairwise accuracy, held-out pairs"),
    ("ppo", "train/reward", "PPO: reward of the rollouts"),
    ("ppo", "train/kl_k1", "PPO: KL(π‖πref), nats per response"),
    ("ppo", "train/oracle_score", "PPO: oracle score of the rollouts"),
    ("ppo", "val/oracle_score", "PPO: oracle score, held-out prompts (greedy)"),
    ("grpo", "train/reward", "GRPO: reward of the rollouts"),
    ("grpo", "val/oracle_score", "GRPO: oracle score, held-out prompts (greedy)"),
    ("rloo", "train/reward", "RLOO: reward of the rollouts"),
    ("rloo", "val/oracle_score", "RLOO: oracle score, held-out prompts (greedy)"),
    ("dpo", "val/policy_accuracy", "DPO: policy preference accuracy, held-out pairs"),
    ("dpo", "val/oracle_score", "DPO: oracle score, held-out prompts (greedy)"),
    ("grpo_verifiable", "train/reward", "GRPO, verifiable reward: rollouts answered correctly"),
    ("grpo_verifiable", "val/oracle_score", "GRPO, verifiable reward: held-out score (greedy)"),
]


def latest_metrics(run_dir: str | Path) -> Path | None:
    """The newest ``metrics.csv`` under ``run_dir``, or None."""
    found = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def read_series(metrics_csv: Path, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, skipping rows where it was not logged."""
    steps, values = [], []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                steps.append(float(row["step"]))
                values.append(float(row[key]))
    return steps, values


def _plot(steps: list[float], values: list[float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(summary: dict, runs_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNG plots under ``out_dir``; return the report's path.

    ``summary`` is the demo's: {"oracle_score": {stage: {"all", task...}}, "seconds": {...},
    "reward_accuracy": float, "ppo_last_iteration": {...}}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores, seconds = summary.get("oracle_score", {}), summary.get("seconds", {})
    tasks = sorted({k for s in scores.values() for k in s if k != "all"})
    lines = [
        "# Pipeline report",
        "",
        "| stage | oracle score | " + " | ".join(tasks) + " | wall time |",
    ]
    lines.append("|---" * (len(tasks) + 3) + "|")
    for stage in ["base", *seconds]:
        secs = f"{seconds[stage]:.0f} s" if stage in seconds else "–"
        if stage in scores:
            per_task = " | ".join(f"{scores[stage].get(t, float('nan')):.2f}" for t in tasks)
            lines.append(f"| {stage} | {scores[stage]['all']:.3f} | {per_task} | {secs} |")
        elif stage == "reward":
            acc = summary.get("reward_accuracy")
            text = f"pairwise accuracy {acc:.3f}" if acc is not None else "–"
            lines.append(f"| reward model | {text} |" + " |" * len(tasks) + f" {secs} |")
    last = summary.get("ppo_last_iteration")
    if last and last.get("kl") is not None:
        lines += [
            "",
            f"PPO's last iteration: KL(π‖πref) {last['kl']:.3f} nats per response, β {last['beta']:.3f}.",
        ]
    lines += [
        "",
        "Scores: greedy answers to the bundled task's held-out prompts, scored by its oracle.",
        "",
    ]
    for stage, key, title in CURVES:
        metrics = latest_metrics(Path(runs_dir) / stage)
        steps, values = read_series(metrics, key) if metrics else ([], [])
        if not steps:
            continue
        png = f"{stage}_{key.replace('/', '_')}.png"
        _plot(steps, values, title, out / png)
        lines += [f"## {title}", "", f"![{title}]({png})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
