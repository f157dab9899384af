"""Run sides of one case in a chosen order, each in its own process, and print their step times.

    python benchmarks/cold_start.py --device cuda --peer-path trl-latest=/tmp/trl-latest \\
        --case sft-llama-500m-var-bf16 --order trl ours ours

On a fresh GPU machine this shows who pays for a case's first meeting with each sequence length:
the first process does (1.2-1.8 s per new length on an H200), the later ones, TRL's or ours,
do not. ``run.py --device cuda`` primes variable-length cases for that reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import run
import suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="sft-llama-500m-var-bf16")
    parser.add_argument("--order", nargs="+", default=["trl", "ours", "ours"], help="side labels")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--peer-path", action="append", default=[], metavar="ENV=DIR")
    parser.add_argument("--out", type=Path, default=run.CACHE / "cold-start")
    args = parser.parse_args()
    cases = {c.name: c for c in (*suite.full(), *suite.gpu())}
    if args.case not in cases:
        parser.error(f"--case {args.case!r}: one of {', '.join(sorted(cases))}")
    case = cases[args.case]
    sides = {s.label: s for s in case.sides}
    assets.build(run.CACHE, case.model, assets.DataSpec())
    peers = dict(p.split("=", 1) for p in args.peer_path)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(args.order):
        side = sides[label]
        python = (Path(sys.executable), peers.get(side.env))
        if side.env != "ours" and side.env not in peers:
            python = (run.envs.ensure(run.VENVS, side.env, suite.ENVS[side.env]), None)
        config = case.config(side, str(run.CACHE), args.threads, seed=0, device=args.device)
        start = time.perf_counter()
        res = run.run_worker(python, side.worker, config, args.out, f"{i}-{label}", args.threads)
        steps = [round(d * 1000) for d in res.get("durations", [])]
        print(
            f"{i} {label}: {time.perf_counter() - start:.0f} s, step ms {steps or res}", flush=True
        )


if __name__ == "__main__":
    main()
