"""What every benchmark worker shares: its entry point, clocks, token counts, memory, output.

Workers run in separate processes and in separate virtual environments (ours, TRL latest, TRL
0.29.1), so this file needs nothing but the standard library and torch.

A worker is run as ``python workers/<side>_<stage>.py CONFIG.json RESULT.json``. Its module imports
its libraries and defines ``run(cfg) -> dict``; its ``__main__`` block calls :func:`run_worker`,
which reads the config, sets threads, seed and device, records the resident memory after the
imports, calls ``run`` (build model and data, run ``warmup + steps`` training steps, marking the end
of each with a :class:`StepClock`) and writes the measurements it returns, with the memory peak and
versions, to RESULT.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def run_worker(
    run: Callable[[dict[str, Any]], dict[str, Any]], argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """A worker's entry point: ``argv`` (default ``sys.argv[1:]``) is ``CONFIG.json RESULT.json``.

    ``run(cfg)`` returns the run's measurements: ``durations`` (per step, the first ``warmup``
    are warm-up) and what the worker adds (counts, phases, parity); the result adds the peak memory
    above the memory after the imports, versions, threads and the config.
    """
    config_path, result_path = sys.argv[1:] if argv is None else argv
    cfg: dict[str, Any] = json.loads(Path(config_path).read_text())
    torch.set_num_threads(int(cfg.get("threads", torch.get_num_threads())))
    torch.manual_seed(int(cfg.get("seed", 0)))
    if os.environ.get("BENCH_CUDNN_SDP") == "0":  # an experiment, every side alike: no cuDNN
        torch.backends.cuda.enable_cudnn_sdp(False)  # attention (it plans each new length anew)
    base = memory_mb(device(cfg))
    measured = run(cfg)
    out = result(cfg, base, measured)
    Path(result_path).write_text(json.dumps(out, indent=1))
    return out


def device(cfg: dict[str, Any]) -> str:
    """The config's device: ``"cuda"``: memory is the GPU's, clocks wait for its queue."""
    return cfg.get("device", "cpu")


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a clock read after it counts the work (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def cuda_allocated_mb(peak: bool = False) -> float:
    fn = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
    return fn() / 2**20


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_mb(device: str, peak: bool = False) -> float:
    """The memory a worker's peak is measured in: on CUDA the GPU memory allocated by torch (its
    high-water mark with ``peak``; zero after the imports), else the resident high-water mark."""
    return cuda_allocated_mb(peak) if device == "cuda" else peak_rss_mb()


class StepClock:
    """End time of every training step; step i lasted ``ends[i] - ends[i - 1]``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.ends: list[float] = []
        self.start = time.perf_counter()

    def mark(self) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())

    def durations(self) -> list[float]:
        points = [self.start, *self.ends]
        return [b - a for a, b in zip(points, points[1:])]


class TokenCounter:
    """Counts the non-pad tokens of every forward that records gradients (training forwards).

    A forward pre-hook on the input embedding sees every path through the model (full forward,
    trunk only, fused heads) and nothing else; the benchmark's pad id never occurs in the data.
    """

    def __init__(self, model: torch.nn.Module, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.tokens = 0
        self.rows = 0
        self.per_step: list[int] = []
        model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if torch.is_grad_enabled() and args:
            ids = args[0]
            self.tokens += int((ids != self.pad_token_id).sum())
            self.rows += ids.shape[0]

    def step(self) -> None:
        self.per_step.append(self.tokens)
        self.tokens = 0


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: every ``nn.Linear`` weight (the LM head included,
    even when tied to the embedding, whose lookup is not a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def training(
    cfg: dict[str, Any],
    clock: StepClock,
    model: torch.nn.Module,
    counter: TokenCounter | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A training worker's measurements: step durations, training tokens per step (SFT, reward),
    rows per step, the model's matmul parameters, and ``extra`` (PPO: its iterations)."""
    tokens = {"tokens_per_step": counter.per_step} if counter is not None else {}
    return {
        "durations": clock.durations(),
        **tokens,
        "rows_per_step": cfg["batch_size"],
        **extra,
        "matmul_params": matmul_params(model),
    }


def result(cfg: dict[str, Any], baseline_mb: float, measured: dict[str, Any]) -> dict[str, Any]:
    """The RESULT.json of a run: ``measured`` (durations first), peak memory above the import
    baseline, versions, threads, the config."""
    import importlib.metadata as md

    dev = device(cfg)
    versions = {}
    for pkg in ("torch", "transformers", "trl", "lightning", "accelerate", "datasets"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    peak = memory_mb(dev, peak=True)
    measured = dict(measured)
    out = {
        "config": cfg,
        "durations": measured.pop("durations"),
        "warmup": cfg["warmup"],
        "peak_rss_mb": peak_rss_mb(),
        "baseline_mb": baseline_mb,
        "peak_above_baseline_mb": peak - baseline_mb,
        "memory": "cuda max_memory_allocated" if dev == "cuda" else "resident (RSS)",
        "threads": torch.get_num_threads(),
        "versions": versions,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        **measured,
    }
    if dev == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


class PPOProbe:
    """Phase split and parity of PPO iterations, measured the same way on both sides.

    ``generation`` wraps the side's sampling function (time, response width, tokens sampled);
    the first forward with gradients after it marks the start of the update (a forward pre-hook
    on the trained module); an optimizer step post-hook counts updates. ``end_iteration`` (at each
    step end) closes the iteration: scoring is the time from the end of sampling to the first
    training forward (reward, π_old, π_ref and value forwards, advantages), update the rest.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.iterations: list[dict[str, float]] = []
        self._last_end = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self._gen = [0.0, 0.0]
        self._update_start: float | None = None
        self._cur = {"episodes": 0, "response_width": 0, "tokens_generated": 0, "updates": 0}

    def generation(self, fn, width_and_tokens):
        """``fn`` wrapped; ``width_and_tokens(args, kwargs, out) -> (rows, width, tokens)``."""

        def wrapped(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self._gen = [self._gen[0] or start, time.perf_counter()]
            rows, width, tokens = width_and_tokens(args, kwargs, out)
            self._cur["episodes"] += rows
            self._cur["response_width"] = width
            self._cur["tokens_generated"] += tokens
            return out

        return wrapped

    def watch_update(self, module: torch.nn.Module) -> None:
        def hook(mod, args, kwargs):
            if torch.is_grad_enabled() and self._update_start is None and self._gen[1]:
                sync(self.device)
                self._update_start = time.perf_counter()

        module.register_forward_pre_hook(hook, with_kwargs=True)

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        def hook(opt, args, kwargs):
            self._cur["updates"] += 1

        optimizer.register_step_post_hook(hook)

    def start(self) -> None:
        """Discard what came before the first iteration (set-up): call it at training start."""
        self.end_iteration()
        self.iterations.clear()

    def end_iteration(self) -> None:
        sync(self.device)
        end = time.perf_counter()
        gen_start, gen_end = self._gen
        update_start = self._update_start or end
        self.iterations.append(
            {
                **self._cur,
                "total": end - self._last_end,
                "generation": gen_end - gen_start,
                "scoring": update_start - gen_end,
                "update": end - update_start,
                "other": gen_start - self._last_end,
            }
        )
        self._last_end = end
        self._reset()
