"""Soak test: PPO on the embedded tiny model for thousands of episodes on CPU, memory sampled
every iteration.

    python benchmarks/soak_ppo.py                         # 200 iterations x 32 prompts x 2 samples
    python benchmarks/soak_ppo.py --iterations 40 --out runs/soak

Runs the real stage: a reward model and a critic exported from the tiny model, the bundled task's
prompts through PromptDataModule, validation, a CSV logger, sample tables and checkpoints, under a
Lightning Trainer. The process's resident memory (RSS) is read after every iteration; after the
warm-up (the first ``--warmup`` fraction of iterations, where allocator pools and caches fill), a
least-squares line through RSS against iteration gives the growth per iteration with its 95%
interval. Memory is steady when that growth is below ``--max-kib-per-iteration``: a leak of one
rollout's tensors (tens of KiB here) per iteration would exceed it; ``--leak-kib`` leaks a known
amount per iteration on purpose, to check that the measurement sees it. Prints and writes
soak.json; exits 1 when memory is not steady.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b·x: (b, standard error of b, residual standard deviation)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residuals = [y - (my + b * (x - mx)) for x, y in zip(xs, ys)]
    var = sum(r * r for r in residuals) / max(n - 2, 1)
    return b, math.sqrt(var / sxx), math.sqrt(var)


def build(work: Path, hidden: int, layers: int) -> tuple[str, str, Path]:
    """The tiny policy, a reward model exported from it (random head, with stats), the task data."""
    import torch

    from lightning_rlhf.models import export_hf, load_scalar_model, load_tokenizer
    from lightning_rlhf.tasks import write_task_data
    from lightning_rlhf.tiny import init_tiny_model

    policy = str(init_tiny_model(work / "policy", hidden_size=hidden, num_layers=layers))
    torch.manual_seed(0)
    rm = load_scalar_model(policy, pad_token_id=0)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    stats = {"reward_stats.json": {"mean": 0.0, "std": 1.0}}
    rm_dir = str(export_hf(rm, load_tokenizer(policy), work / "rm", extra_json=stats))
    write_task_data(work / "task", seed=1, scale=0.2)
    return policy, rm_dir, work / "task"


def stage(args: argparse.Namespace, ppo, policy: str, rm_dir: str, task: Path):
    """The PPO module (``ppo``: its PPOOptions; adaptive KL, the task's oracle) and its prompts."""
    from lightning_rlhf import (
        AdaptiveKLController,
        KLPenalty,
        PPOModule,
        PromptDataModule,
        RewardModel,
        ScalarModelCritic,
    )
    from lightning_rlhf.rewards import TaskOracle
    from lightning_rlhf.rollout import SamplingOptions

    module = PPOModule(
        policy,
        reward=RewardModel(rm_dir),
        critic=ScalarModelCritic(rm_dir),
        sampling=SamplingOptions(max_new_tokens=8),
        ppo=ppo,
        kl=KLPenalty(AdaptiveKLController(init_beta=0.05, target=0.5, horizon=1000)),
        oracle=TaskOracle(),
        log_samples_every_n_iterations=25,
    )
    data = PromptDataModule(
        train_path=str(task / "prompts_train.jsonl"),
        val_path=str(task / "prompts_val.jsonl"),
        tokenizer=policy,
        batch_size=args.prompts,
        num_val_prompts=32,
        max_prompt_length=32,
    )
    return module, data


def rss_sampler(args: argparse.Namespace, samples: list[tuple[int, int, float]]):
    """A callback appending (iteration, RSS, seconds since its creation) after every iteration,
    first leaking ``--leak-kib`` on purpose when asked."""
    import lightning as L
    import torch

    leaked: list[torch.Tensor] = []
    start = time.perf_counter()

    class RSS(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if args.leak_kib:  # the detector's calibration: a leak of known size
                leaked.append(torch.ones(int(args.leak_kib * 256)))  # 256 float32 = 1 KiB
            samples.append((len(samples) + 1, rss_bytes(), time.perf_counter() - start))

    return RSS()


def trainer(args: argparse.Namespace, work: Path, callback, steps_per_iteration: int):
    """The run's Trainer: validation and a checkpoint 4 times, a CSV logger, every step logged."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    every = max(args.iterations // 4, 1)
    return L.Trainer(
        accelerator="cpu",
        max_steps=args.iterations * steps_per_iteration,
        val_check_interval=every,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        use_distributed_sampler=False,
        logger=CSVLogger(work / "logs"),
        callbacks=[
            callback,
            ModelCheckpoint(work / "ckpt", every_n_train_steps=every * steps_per_iteration),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def summarize(args: argparse.Namespace, samples: list[tuple[int, int, float]]) -> dict:
    """RSS at a few points and its growth per iteration after the warm-up (a line's slope)."""
    skip = max(int(len(samples) * args.warmup), 2)
    xs = [float(i) for i, _, _ in samples[skip:]]
    ys = [rss / 1024 for _, rss, _ in samples[skip:]]  # KiB
    slope, se, noise = fit_line(xs, ys)
    return {
        "iterations": len(samples),
        "episodes": len(samples) * args.prompts * args.samples,
        "warmup_iterations": skip,
        "seconds": round(samples[-1][2], 1),
        "rss_mib": {
            "first": round(samples[0][1] / 2**20, 1),
            "after_warmup": round(samples[skip][1] / 2**20, 1),
            "last": round(samples[-1][1] / 2**20, 1),
            "max": round(max(s[1] for s in samples) / 2**20, 1),
        },
        "slope_kib_per_iteration": round(slope, 2),
        "slope_95ci_kib": [round(slope - 1.96 * se, 2), round(slope + 1.96 * se, 2)],
        "residual_std_kib": round(noise, 1),
        "max_kib_per_iteration": args.max_kib_per_iteration,
        "steady": slope < args.max_kib_per_iteration,
        "rss_kib_per_iteration": [round(s[1] / 1024) for s in samples],
    }


def soak(args: argparse.Namespace, work: Path) -> dict:
    import lightning as L
    import torch

    from lightning_rlhf.modules.ppo import PPOOptions

    torch.set_num_threads(args.threads)
    policy, rm_dir, task = build(work, args.hidden_size, args.num_layers)
    L.seed_everything(0, verbose=False)
    ppo = PPOOptions(ppo_epochs=2, num_minibatches=2, samples_per_prompt=args.samples)
    module, data = stage(args, ppo, policy, rm_dir, task)
    steps_per_iteration = ppo.ppo_epochs * ppo.num_minibatches
    samples: list[tuple[int, int, float]] = []  # (iteration, rss, seconds)
    callback = rss_sampler(args, samples)
    trainer(args, work, callback, steps_per_iteration).fit(module, data)
    return summarize(args, samples)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    p.add_argument("--samples", type=int, default=2, help="responses per prompt")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--warmup", type=float, default=0.3, help="fraction of iterations left out")
    p.add_argument("--max-kib-per-iteration", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--leak-kib", type=float, default=0, help="leak this much per iteration, on purpose"
    )
    p.add_argument("--out", type=Path, default=None, help="keep the run here (default: temp)")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = soak(args, work)
        (work / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "rss_kib_per_iteration"}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["steady"] else 1)
