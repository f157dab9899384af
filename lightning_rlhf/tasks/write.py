"""Write the bundled task's SFT, preference and prompt files as JSONL (what `datasets` loads)."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from lightning_rlhf.io import atomic_dir
from lightning_rlhf.tasks.suite import Problem, corrupt, demonstrate, sample_problems

# rows per split; the val split is drawn from problems disjoint from train
SIZES = {"train": {"sft": 20000, "pref": 10000, "prompts": 4000}, "val": 500}
KINDS = ("sft", "pref", "prompts")
OUTPUTS = {f"{k}_{s}.jsonl" for k in KINDS for s in ("train", "val")} | {
    "rewardbench_val.jsonl",
    "rewardbench2_val.jsonl",
}


def _size(split: str, kind: str, scale: float) -> int:
    """Rows of one file: ``scale`` times the train size (at least 1), or the fixed val size."""
    return SIZES["val"] if split == "val" else max(1, int(SIZES["train"][kind] * scale))


def _write_jsonl(path: Path, rows: Iterable[dict], bar: tqdm) -> int:
    n = 0
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
            bar.update()
    return n


def _check_target(path: Path) -> None:
    """``make-data`` replaces its directory whole: only an absent or empty one, or an earlier
    ``make-data`` output (nothing but the files it writes), may be replaced."""
    path = path.absolute()
    if not path.exists():
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"make-data: {path} is not a directory; choose another out_dir")
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        raise FileExistsError(f"make-data: {path} is the working directory or holds it")
    foreign = sorted(e.name for e in path.iterdir() if e.name not in OUTPUTS)
    if foreign:
        raise FileExistsError(
            f"make-data: {path} holds files it did not write ({', '.join(foreign[:5])}); it "
            "replaces its directory whole, so nothing was written: choose another out_dir"
        )


def _distinct_wrong(problem, rng: random.Random, k: int) -> list[str]:
    """``k`` different wrong answers (fewer only if the problem has fewer within 50 draws)."""
    wrong: list[str] = []
    for _ in range(50):
        if len(wrong) == k:
            break
        w = corrupt(problem, rng)
        if w not in wrong:
            wrong.append(w)
    return wrong


def _rewardbench_rows(n: int, seed: int, version: int) -> Iterable[dict]:
    """Held-out rows in RewardBench v1 (one rejected) or v2 (three rejected) layout."""
    rng = random.Random(seed)
    for i, p in enumerate(sample_problems(n, seed=seed, held_out=True)):
        if version == 1:
            yield {"prompt": p.prompt, "chosen": p.answer, "rejected": corrupt(p, rng),
                   "subset": p.task}  # fmt: skip
        else:
            yield {"id": str(i), "prompt": p.prompt, "chosen": [p.answer],
                   "rejected": _distinct_wrong(p, rng, 3), "subset": p.task}  # fmt: skip


def _task_rows(
    kind: str, problems: Iterable[Problem], rng: random.Random, demo_noise: float
) -> Iterable[dict]:
    """The rows of one ``kind`` of file, as ``write_task_data`` describes them; drawn from ``rng``
    row by row as they are written, so the same seed gives the same bytes."""
    for p in problems:
        if kind == "sft":
            yield {"task": p.task, "prompt": p.prompt,
                   "completion": demonstrate(p, rng, demo_noise)}  # fmt: skip
        elif kind == "pref":
            yield {"task": p.task, "prompt": p.prompt, "chosen": p.answer,
                   "rejected": corrupt(p, rng)}  # fmt: skip
        else:
            yield {"task": p.task, "prompt": p.prompt, "answer": p.answer}


def write_task_data(
    out_dir: str | Path,
    seed: int = 1234,
    scale: float = 1.0,
    demo_noise: float = 0.5,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``{sft,pref,prompts}_{train,val}.jsonl`` under ``out_dir``; return rows per file.

        sft:     {"task", "prompt", "completion"}   the noisy demonstrator's answer (``demo_noise``)
        pref:    {"task", "prompt", "chosen", "rejected"}   chosen is correct, rejected is not
        prompts: {"task", "prompt", "answer"}       for RL; the oracle needs only the prompt

    and two held-out files in RewardBench's layouts, for ``evaluate-rm``:
    ``rewardbench_val.jsonl`` {"prompt", "chosen", "rejected", "subset"} (v1: pairs, the subset is
    the task) and ``rewardbench2_val.jsonl`` {"id", "prompt", "chosen": [1], "rejected": [3],
    "subset"} (v2: best of four).

        The same seed writes the same bytes. ``scale`` multiplies the train sizes (tests use less).
        A progress bar with the rate in rows/s goes to stderr unless ``progress`` is False.
    """
    counts: dict[str, int] = {}
    sizes = {
        (split, kind): _size(split, kind, scale) for split in ("train", "val") for kind in KINDS
    }
    bar = tqdm(
        total=sum(sizes.values()) + 2 * SIZES["val"],
        desc=f"writing {out_dir}",
        unit="row",
        file=sys.stderr,
        disable=not progress,
    )
    with atomic_dir(out_dir, guard=_check_target) as tmp:
        for split, held_out in (("train", False), ("val", True)):
            for offset, kind in enumerate(KINDS):
                n = sizes[split, kind]
                problems = sample_problems(n, seed=seed * 10 + offset, held_out=held_out)
                rows = _task_rows(kind, problems, random.Random(seed * 100 + offset), demo_noise)
                name = f"{kind}_{split}.jsonl"
                counts[name] = _write_jsonl(Path(tmp) / name, rows, bar)
        for version, name in ((1, "rewardbench_val.jsonl"), (2, "rewardbench2_val.jsonl")):
            rows = _rewardbench_rows(SIZES["val"], seed * 10 + 5 + version, version)
            counts[name] = _write_jsonl(Path(tmp) / name, rows, bar)
    bar.close()
    return counts
