"""Run ``python -m lightning_rlhf ...`` in a subprocess, as a user would."""

import csv
import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args, cwd, env=None, check=True, threads=None, timeout=500):
    """The finished process; with ``check`` an exit code other than 0 fails with its output.

    ``threads`` pins torch's CPU threads (tiny models run fastest and most repeatably on one).
    """
    env = dict(env or os.environ)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the other workers hold the other cores: more threads than cores made the slow tests
        # 2-3x slower (OpenMP threads spinning on each other's barriers), past their timeouts
        threads = 1
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_rlhf", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def read_metrics(log_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from every metrics.csv under ``log_dir``."""
    out: dict[int, dict[str, float]] = {}
    for path in sorted(log_dir.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                step = out.setdefault(int(row["step"]), {})
                step.update({k: float(v) for k, v in row.items() if v and k != "step"})
    return out
