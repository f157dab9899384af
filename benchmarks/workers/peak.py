"""Measured matmul peak: square matmuls on the benchmark's device and threads, fp32 and bf16.

Reports the median GFLOP/s of ``reps`` timed (n × n) @ (n × n) products after two warm-ups
(2·n³ FLOPs each; n = 2048 on CPU, 8192 on a GPU, where a smaller product would time launch
overhead); MFU elsewhere is measured against the median of the case's dtype.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from common import device, run_worker, sync


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    dev = device(cfg)
    n = int(cfg.get("n", 8192 if dev == "cuda" else 2048))
    reps = int(cfg.get("reps", 8))
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
        for _ in range(2):
            a @ b
        rates = []
        for _ in range(reps):
            sync(dev)
            start = time.perf_counter()
            a @ b
            sync(dev)
            rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
        peaks[name] = {"median": statistics.median(rates), "max": max(rates), "all": rates}
    return {"durations": [], "gflops": peaks, "n": n}


if __name__ == "__main__":
    run_worker(run)
