"""Where a reward model of the bundled task is blind: its pairwise accuracy on held-out prompts
against one kind of wrong answer at a time, the slips a policy can drift to under RL.

    python benchmarks/rm_probe.py artifacts/rm [--prompts artifacts/task/prompts_val.jsonl]

The reward stage's own pairs mix the demonstrator's habits (count + 1, the last letter of a
reversal dropped) with random near misses, so its held-out accuracy can look good while the model
cannot tell an answer from the same answer off by one: PPO then finds those answers. Each line is
the share of prompts where the correct answer outscores that wrong one (0.5: blind, below: the
wrong one is preferred).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

# name -> (task, wrong answer from the correct one; None: no such slip for this answer)
PROBES: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "cnt +1 (the demonstrator's habit)": ("cnt", lambda a: str(int(a) + 1)),
    "cnt -1": ("cnt", lambda a: str(int(a) - 1) if int(a) > 0 else None),
    "add +1": ("add", lambda a: str(int(a) + 1)),
    "add -1": ("add", lambda a: str(int(a) - 1)),
    "add +10": ("add", lambda a: str(int(a) + 10)),
    "add -10": ("add", lambda a: str(int(a) - 10)),
    "rev, last letter dropped (the habit)": ("rev", lambda a: a[:-1]),
    "rev, first two letters swapped": ("rev", lambda a: a[1] + a[0] + a[2:]),
    "rev, last two letters swapped": ("rev", lambda a: a[:-2] + a[-1] + a[-2]),
    "rev, not reversed": ("rev", lambda a: a[::-1]),
}


def probe(reward_dir: str, prompts_path: str) -> dict[str, dict]:
    """Per probe: {"accuracy", "n"} over the prompts where the slip differs from the answer."""
    from lightning_rlhf.rewards import RewardModel

    rm = RewardModel(reward_dir)
    with open(prompts_path) as f:
        rows = [json.loads(line) for line in f]
    out = {}
    for name, (task, slip) in PROBES.items():
        pairs = [(r["prompt"], r["answer"], slip(r["answer"])) for r in rows if r["task"] == task]
        pairs = [p for p in pairs if p[2] is not None and p[2] != p[1]]
        prompts = [p for p, _, _ in pairs]
        right = rm(prompts, [a for _, a, _ in pairs])
        wrong = rm(prompts, [w for _, _, w in pairs])
        out[name] = {"accuracy": float((right > wrong).float().mean()), "n": len(pairs)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("reward", help="a reward-model export of the bundled task (artifacts/rm)")
    p.add_argument("--prompts", default="artifacts/task/prompts_val.jsonl")
    a = p.parse_args()
    for name, r in probe(a.reward, a.prompts).items():
        print(f"{name:<40} {r['accuracy']:.3f}  (n={r['n']})")


if __name__ == "__main__":
    main()
