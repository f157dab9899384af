"""Write the bundled task's SFT, preference and prompt files as JSONL (what `datasets` loads)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from lightning_rlhf.io import atomic_dir
from lightning_rlhf.tasks.suite import corrupt, demonstrate, sample_problems

# rows per split; the val split is drawn from problems disjoint from train
SIZES = {"train": {"sft": 20000, "pref": 10000, "prompts": 4000}, "val": 500}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def write_task_data(
    out_dir: str | Path, seed: int = 1234, scale: float = 1.0, demo_noise: float = 0.5
) -> dict[str, int]:
    """Write ``{sft,pref,prompts}_{train,val}.jsonl`` under ``out_dir``; return rows per file.

    sft:     {"task", "prompt", "completion"}   the noisy demonstrator's answer (``demo_noise``)
    pref:    {"task", "prompt", "chosen", "rejected"}   chosen is correct, rejected is not
    prompts: {"task", "prompt", "answer"}       for RL; the oracle needs only the prompt

    The same seed writes the same bytes. ``scale`` multiplies the train sizes (tests use less).
    """
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for split, held_out in (("train", False), ("val", True)):
            for offset, kind in enumerate(("sft", "pref", "prompts")):
                n = SIZES["val"] if held_out else max(1, int(SIZES["train"][kind] * scale))
                problems = sample_problems(n, seed=seed * 10 + offset, held_out=held_out)
                rng = random.Random(seed * 100 + offset)
                if kind == "sft":
                    rows = (
                        {
                            "task": p.task,
                            "prompt": p.prompt,
                            "completion": demonstrate(p, rng, demo_noise),
                        }
                        for p in problems
                    )
                elif kind == "pref":
                    rows = (
                        {
                            "task": p.task,
                            "prompt": p.prompt,
                            "chosen": p.answer,
                            "rejected": corrupt(p, rng),
                        }
                        for p in problems
                    )
                else:
                    rows = (
                        {"task": p.task, "prompt": p.prompt, "answer": p.answer} for p in problems
                    )
                name = f"{kind}_{split}.jsonl"
                counts[name] = _write_jsonl(Path(tmp) / name, rows)
    return counts
