"""Does choosing which pairs to label save labels? Random vs reward-model uncertainty (vs an
ensemble's disagreement), with the bundled task's oracle standing in for the person, labelling
through the app's HTTP API.

python benchmarks/label_active.py --out benchmarks/results/label_active --epochs 10   # ~16 min, 2 CPUs
python benchmarks/label_active.py --arms disagreement --epochs 10 \
    --out benchmarks/results/label_active_disagreement

Per seed: a pool of the task's train pairs (a correct and a corrupted answer, sides shuffled) is
queued in one database per arm, identically. Every arm labels the first 100 pairs of the random
order (the same pairs) and trains the same starting reward model on them. Then, round by round up
to N = 200, 400, 800 labels: the uncertainty arm re-ranks its open pairs by the current reward
model's uncertainty (smallest |r_A − r_B|, ``label rerank``), the disagreement arm by the std of
the margins of that model and ``members − 1`` more trained on bootstrap resamples of its labels,
the random arm keeps its order; the oracle labels through ``/api/next`` + ``/api/label``;
``label export`` gives the preference JSONL; a reward model is trained afresh on it (the same
steps per label in every arm) and scored by pairwise accuracy on the task's 500 held-out pairs.
Writes results.json and accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

# this checkout, put first on the path by main() (its package, not an installed one)
ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queue_pool(db_path: Path, pool: list[dict], seed: int) -> None:
    from lightning_rlhf.label.db import LabelDB

    rng = random.Random(seed)
    db = LabelDB(db_path)
    with db.transaction():
        for row in pool:
            sides = [row["chosen"], row["rejected"]]
            rng.shuffle(sides)
            db.add_pair(row["prompt"], tuple(sides), ("task", "task"), {}, rng.random())
    db.close()


class Server:
    def __init__(self, db: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lightning_rlhf.label",
                "--db",
                str(db),
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        import httpx

        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        for _ in range(300):
            try:
                self.csrf = self.http.get("/api/session").json()["csrf"]
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("label server did not start")

    def oracle_labels(self, n: int) -> None:
        """The oracle as the annotator: the correct response is better; both right or wrong: tie."""
        from lightning_rlhf.tasks import score

        for _ in range(n):
            pair = self.http.get("/api/next").json()
            left = score(pair["prompt"], pair["left"]["text"])
            right = score(pair["prompt"], pair["right"]["text"])
            choice = "left" if left > right else "right" if right > left else "tie"
            r = self.http.post(
                "/api/label",
                json={"pair_id": pair["pair_id"], "choice": choice},
                headers={"X-CSRF-Token": self.csrf},
            )
            r.raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def train_reward_model(base: str, prefs: Path, out: Path, epochs: int, seed: int) -> Path:
    import lightning as L

    from lightning_rlhf import PreferenceDataModule, RewardModule
    from lightning_rlhf.optim import ScheduleOptions

    L.seed_everything(seed, verbose=False)
    n = len(read_jsonl(prefs))
    steps = max(20, math.ceil(epochs * n / 32))
    module = RewardModule(
        base,
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0),
        schedule=ScheduleOptions(warmup_steps=5),
    )
    dm = PreferenceDataModule(
        train_path=str(prefs), val_path=str(prefs), tokenizer=base, max_length=32, batch_size=32
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    return module.export(out)


def accuracy(rm_dir: Path, val: list[dict]) -> float:
    from lightning_rlhf.rewards import RewardModel

    rm = RewardModel(str(rm_dir), normalize=False)
    chosen = rm([r["prompt"] for r in val], [r["chosen"] for r in val])
    rejected = rm([r["prompt"] for r in val], [r["rejected"] for r in val])
    return (chosen > rejected).float().mean().item()


def bootstrap(prefs: Path, out: Path, seed: int) -> Path:
    rows = read_jsonl(prefs)
    rng = random.Random(seed)
    out.write_text("".join(json.dumps(rng.choice(rows)) + "\n" for _ in rows))
    return out


def rankers(arm: str, base: str, prefs: Path, model: Path, stem: Path, a, seed: int) -> list[str]:
    """The reward models that order the arm's next round: none (random), the arm's own model
    (uncertainty), or it and ``members − 1`` models trained on bootstrap resamples of the same
    labels (disagreement)."""
    if arm == "random":
        return []
    members = [str(model)]
    for k in range(1, a.members if arm == "disagreement" else 1):
        resampled = bootstrap(prefs, Path(f"{stem}_boot{k}.jsonl"), seed * 100 + k)
        members.append(
            str(
                train_reward_model(
                    base, resampled, Path(f"{stem}_boot{k}"), a.epochs, seed * 100 + k
                )
            )
        )
    return members


def run_seed(work: Path, base: str, pool: list, val: list, seed: int, a) -> dict:
    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.export import export_preferences
    from lightning_rlhf.label.fill import rerank

    dbs = {arm: work / f"s{seed}_{arm}.sqlite" for arm in a.arms}
    for db in dbs.values():
        queue_pool(db, pool, seed)
    servers = {arm: Server(db) for arm, db in dbs.items()}
    out: dict = {arm: {} for arm in a.arms}
    try:
        for server in servers.values():
            server.oracle_labels(a.start)  # the same first pairs in every arm
        start = work / f"s{seed}_start.jsonl"
        export_preferences(LabelDB(dbs[a.arms[0]]), str(start))
        model = train_reward_model(base, start, work / f"s{seed}_rm_start", a.epochs, seed)
        out["start"] = {"n": a.start, "accuracy": accuracy(model, val)}
        rank = {
            arm: rankers(arm, base, start, model, work / f"s{seed}_{arm}_start", a, seed)
            for arm in a.arms
        }
        done = a.start
        for n in a.sizes:
            for arm, server in servers.items():
                if rank[arm]:
                    rerank(LabelDB(dbs[arm]), arm, rank[arm])
                server.oracle_labels(n - done)
                prefs = work / f"s{seed}_{arm}_{n}.jsonl"
                counts = export_preferences(LabelDB(dbs[arm]), str(prefs))
                stem = work / f"s{seed}_rm_{arm}_{n}"
                model = train_reward_model(base, prefs, stem, a.epochs, seed)
                out[arm][n] = {"accuracy": accuracy(model, val), **counts}
                print(json.dumps({"seed": seed, "arm": arm, "n": n, **out[arm][n]}), flush=True)
                rank[arm] = rankers(arm, base, prefs, model, stem, a, seed)
            done = n
    finally:
        for server in servers.values():
            server.stop()
    return out


def plot(results: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    arms = [k for k in next(iter(results.values())) if k != "start"]
    for arm in arms:
        accs = torch.tensor([[r[arm][str(n)]["accuracy"] for n in sizes] for r in results.values()])
        mean, std = accs.mean(0), accs.std(0) if len(accs) > 1 else torch.zeros(len(sizes))
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("labels (oracle through the app's HTTP API)")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmarks/results/label_active")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800])
    p.add_argument("--start", type=int, default=100, help="random labels before the first model")
    p.add_argument("--epochs", type=int, default=8, help="reward-model epochs over the labels")
    p.add_argument(
        "--arms",
        nargs="+",
        default=["random", "uncertainty"],
        choices=["random", "uncertainty", "disagreement"],
    )
    p.add_argument("--members", type=int, default=3, help="disagreement: the ensemble's size")
    p.add_argument(
        "--plot",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only plot these results files' arms together (same seeds and sizes)",
    )
    p.add_argument("--work", default="/tmp/label_active", help="databases, exports and models")
    p.add_argument("--pool-scale", type=float, default=0.3, help="task scale: 3,000 pool pairs")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.plot:
        merged: dict = {}
        for path in a.plot:
            for seed, arms in json.loads(Path(path).read_text())["results"].items():
                merged.setdefault(seed, {}).update(arms)
        plot(merged, a.sizes, out / "accuracy.png")
        return
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from lightning_rlhf.tasks import write_task_data
    from lightning_rlhf.tiny import init_tiny_model

    base = str(init_tiny_model(work / "base", hidden_size=32, num_layers=2))
    write_task_data(work / "task", seed=7, scale=a.pool_scale)
    pool = read_jsonl(work / "task" / "pref_train.jsonl")
    val = read_jsonl(work / "task" / "pref_val.jsonl")
    began = time.time()
    results = {seed: run_seed(work, base, pool, val, seed, a) for seed in a.seeds}
    summary = {"seconds": round(time.time() - began), "args": vars(a), "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(json.loads(json.dumps(results)), a.sizes, out / "accuracy.png")
    print(json.dumps(summary["results"]))


if __name__ == "__main__":
    main()
