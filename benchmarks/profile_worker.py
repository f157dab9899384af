"""Profile one side of one benchmark case under ``torch.profiler``, in this process.

    python benchmarks/profile_worker.py --case sft-llama-500m-var-bf16 --side ours --device cuda
    .venv/bin/python benchmarks/profile_worker.py --case sft-llama-5m-fixed --side raw

Runs the case's worker (``workers/<side's worker>.py``) as ``run.py`` would (same config; the
case's model assets are built if missing; a TRL side needs TRL importable, e.g. on PYTHONPATH),
with the profiler around it. Writes ``--out``/<case>-<side>.trace.json.gz (Chrome trace: open it in
Perfetto) first, then prints the step durations, the CUDA allocator's counters, and the
operations with the most self time on the CPU (and on the GPU).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import suite
import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", required=True, help="a case name of suite.full() or suite.gpu()")
    parser.add_argument("--side", default="ours", help="the side's label (ours, trl, raw, ...)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / ".cache" / "profiles")
    args = parser.parse_args()
    cases = {c.name: c for c in (*suite.full(), *suite.gpu())}
    if args.case not in cases:
        parser.error(f"--case {args.case!r}: one of {', '.join(sorted(cases))}")
    case = cases[args.case]
    side = next((s for s in case.sides if s.label == args.side), None)
    if side is None:
        parser.error(f"--side {args.side!r}: one of {', '.join(s.label for s in case.sides)}")
    assets.build(HERE / ".cache", case.model, assets.DataSpec())
    tmp = Path(tempfile.mkdtemp())
    config = case.config(side, str(HERE / ".cache"), args.threads, device=args.device)
    (tmp / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(HERE / "workers"))
    activities = [ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:  # the worker's imports too, as in its process
        worker, common = (importlib.import_module(m) for m in (side.worker, "common"))
        common.run_worker(worker.run, [str(tmp / "config.json"), str(tmp / "result.json")])
    args.out.mkdir(parents=True, exist_ok=True)
    trace = args.out / f"{case.name}-{side.label}.trace.json.gz"
    prof.export_chrome_trace(str(tmp / "trace.json"))
    with (tmp / "trace.json").open("rb") as f, gzip.open(trace, "wb") as g:
        shutil.copyfileobj(f, g)
    result = json.loads((tmp / "result.json").read_text())
    print(f"{case.name} {side.label}: step ms", [round(d * 1000) for d in result["durations"]])
    print("trace:", trace)
    if args.device == "cuda":
        stats = torch.cuda.memory_stats()
        print({k: v for k, v in stats.items() if k.startswith("num_")})
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    if args.device == "cuda":
        print(table.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
