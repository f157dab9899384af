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


def main(argv: list[str] | None = None) -> dict:
    from lightning_rlhf.evaluate import evaluate_policy

    p = argparse.ArgumentParser(prog="lightning_rlhf demo", description=__doc__)
    p.add_argument(
        "--stages",
        default=DEFAULT_STAGES,
        help=f"comma-separated, among {','.join(s[0] for s in STAGES)} (run in that order)",
    )
    p.add_argument("--out", default="runs/demo", help="where the summary is written")
    a = p.parse_args(argv)
    wanted = a.stages.split(",")
    unknown = set(wanted) - {s[0] for s in STAGES}
    if unknown:
        p.error(f"--stages: unknown {sorted(unknown)}; choose among {[s[0] for s in STAGES]}")
    py = sys.executable
    if not Path("artifacts/tiny-base").is_dir():
        _run([py, "-m", "lightning_rlhf", "init-model", "artifacts/tiny-base"])
    if not Path("artifacts/task/prompts_val.jsonl").exists():
        _run([py, "-m", "lightning_rlhf", "make-data", "artifacts/task"])
    scores = {"base": evaluate_policy("artifacts/tiny-base", "artifacts/task/prompts_val.jsonl")}
    times: dict[str, float] = {}
    for stage, configs, policy in STAGES:
        if stage not in wanted:
            continue
        start = time.perf_counter()
        _run([py, "-m", "lightning_rlhf", "fit", *(a for c in configs for a in ("--config", c))])
        times[stage] = time.perf_counter() - start
        if policy is not None:
            scores[stage] = evaluate_policy(policy, "artifacts/task/prompts_val.jsonl")
    summary: dict = {"oracle_score": scores, "seconds": times}
    if "ppo" in times and Path("artifacts/ppo/ppo_stats.json").exists():
        last = json.loads(Path("artifacts/ppo/ppo_stats.json").read_text())
        keys = {"kl": "kl_k1", "kl_k3": "kl_k3", "beta": "beta", "reward": "reward"}
        summary["ppo_last_iteration"] = {k: last.get(f"train/{v}") for k, v in keys.items()}
    if "reward" in times:
        stats = json.loads(Path("artifacts/rm/reward_stats.json").read_text())
        summary["reward_accuracy"] = stats.get("val_accuracy")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nstage           oracle score on held-out prompts (greedy)    wall time")
    for stage in ["base", *times]:
        secs = f"{times[stage]:.0f} s" if stage in times else "-"
        if stage in scores:
            s = scores[stage]
            per_task = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k != "all")
            print(f"{stage:<15} {s['all']:.3f} ({per_task})    {secs}")
        else:
            acc = summary.get("reward_accuracy") or float("nan")
            print(
                f"{stage:<15} reward model: pairwise accuracy {acc:.3f} on held-out pairs    {secs}"
            )
    if "ppo_last_iteration" in summary:
        last = summary["ppo_last_iteration"]
        print(
            f"ppo: KL(π‖πref) {last['kl']:.3f} nats per response (k3 {last['kl_k3']:.3f}), "
            f"β {last['beta']:.3f} at the last iteration"
        )
    from lightning_rlhf.report import write_report

    report = write_report(summary, "runs", out)
    print(f"summary written to {out / 'summary.json'}; report with plots: {report}")
    return summary
