"""Measured matmul peak: square matmuls at the benchmark's thread count, fp32 and bf16.

Reports the median GFLOP/s of ``reps`` timed (n × n) @ (n × n) products after two warm-ups
(2·n³ FLOPs each); MFU elsewhere is measured against the fp32 median.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import CONFIG, StepClock, result

n, reps = int(CONFIG.get("n", 2048)), int(CONFIG.get("reps", 8))
peaks = {}
for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    peaks[name] = {"median": statistics.median(rates), "max": max(rates), "all": rates}
result(StepClock(), gflops=peaks, n=n)
