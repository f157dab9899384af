"""Benchmark lightning_rlhf against TRL, stage by stage, in one command.

    .venv/bin/python benchmarks/run.py            # the full suite (about 15 min on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # every case on the small model, a few steps
    .venv/bin/python benchmarks/run.py --long     # PPO and GRPO with 256-token responses
    python benchmarks/run.py --device cuda --peer-path trl-latest=DIR --peer-path trl-0.29.1=DIR
                                                  # the GPU suite (a 0.5B model in bf16)

Builds the models, tokenizers and data (``assets.py``, cached in ``benchmarks/.cache``), creates
the peers' environments (``envs.py``, in ``benchmarks/.venvs``), measures the matmul peak, runs
every side of every case alternately in separate processes (round 1: A B C, round 2: A B C, ...),
and writes ``benchmarks/results/<machine>-<date>-<threads>t.json`` and ``benchmarks/results/latest.md``
(``latest-long.md`` for ``--long``, ``latest-partial.md`` for ``--quick`` or ``--cases`` runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import assets  # benchmarks/ is on sys.path: it holds this script
import envs
import report
import suite

HERE = Path(__file__).resolve().parent
CACHE, VENVS, RESULTS = HERE / ".cache", HERE / ".venvs", HERE / "results"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), ""
    )
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in cpuinfo]
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    gpu = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu": props.name, "gpu_memory_gb": props.total_memory / 1e9}
    return {
        **gpu,
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "flags": " ".join(flags) or "no AVX-512",
        "memory_gb": mem,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def worker_env(threads: int, pythonpath: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath:  # a peer installed into a folder, on top of this interpreter's packages
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return {
        **env,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(CACHE / "hf"),
        "WANDB_MODE": "disabled",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }


Python = tuple[Path, str | None]  # an interpreter and the folder to put first on its path


def run_worker(
    python: Python, worker: str, config: dict, out_dir: Path, tag: str, threads: int
) -> dict[str, Any]:
    """Run one worker in its own process; its result, or {"error": ...} with the log's tail."""
    cfg_path, out_path, log_path = (out_dir / f"{tag}.{ext}" for ext in ("cfg.json", "json", "log"))
    cfg_path.write_text(json.dumps(config, indent=1))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(python[0]), str(HERE / "workers" / f"{worker}.py"), str(cfg_path), str(out_path)],
            env=worker_env(threads, python[1]),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1200,
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        print(f"  {tag}: FAILED ({tail[0][:200]}); log: {log_path}", flush=True)
        return {"error": tail[0][:200], "log": str(log_path)}
    result = json.loads(out_path.read_text())
    result.update(wall_s=wall, load_before=load, load_after=os.getloadavg()[0])
    return result


def run_rounds(
    cases: list[suite.Case],
    pythons: dict[str, Python],
    threads: int,
    repeats: int,
    device: str = "cpu",
    progress=None,
    prime: bool = False,
):
    """Every side of every case once per round, the matmul peak first: (runs, peaks).
    ``progress(runs, peaks)`` is called after every run (results survive a later kill).

    ``prime``: before round 1, the first side of each case whose lengths vary (variable-length
    data; PPO, whose reward model reads re-tokenised text) runs once, untimed. On a
    GPU the first process to meet a new sequence length pays a one-off cost for it (1.2-1.8 s
    per new length on an H200, 2026-11-26), and a cache that outlives the process spares every
    later one: unprimed, whichever side ran first was charged for the machine's cold start.
    """
    out_dir = CACHE / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    for case in cases if prime else ():
        # fixed shapes: the warm-up steps meet every one. PPO's sequences are of one length, but
        # ours' reward model re-tokenises the decoded texts: other lengths every iteration
        if "var" not in case.data and case.stage != "ppo":
            continue
        side = case.sides[0]
        config = case.config(side, str(CACHE), threads, seed=0, device=device)
        start = time.perf_counter()
        run_worker(pythons[side.env], side.worker, config, out_dir, f"prime-{case.name}", threads)
        print(f"  primed {case.name} ({side.label}, untimed): {time.perf_counter() - start:.0f} s")
    runs: dict[str, dict[str, list]] = {c.name: {s.label: [] for s in c.sides} for c in cases}
    peaks = []
    for r in range(repeats):
        print(f"[round {r + 1}/{repeats}] matmul peak", flush=True)
        config = {"warmup": 0, "threads": threads, "device": device}
        peak = run_worker(pythons["ours"], "peak", config, out_dir, f"peak-{r}", threads)
        peaks.append(peak)
        for case in cases:
            peak_now = peak.get("gflops", {}).get(report.dtype(case), {}).get("median")
            for side in case.sides:
                tag = f"{case.name}-{side.label}-{r}"
                config = case.config(side, str(CACHE), threads, seed=0, device=device)
                res = run_worker(pythons[side.env], side.worker, config, out_dir, tag, threads)
                res.update(round=r, peak_gflops=peak_now)
                runs[case.name][side.label].append(res)
                if "error" not in res:
                    rate = report.throughput(case.stage, res)
                    print(f"  {tag}: {rate:.2f} {suite.METRIC[case.stage]}", flush=True)
                if progress is not None:
                    progress(runs, peaks)
    return runs, peaks


def summarize(
    case: suite.Case, runs: dict[str, list], threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """One case's statistics per side (or the first error) and its ratios."""
    sides = {}
    for label, side_runs in runs.items():
        if not side_runs:
            continue  # not run yet (a partial write after a round)
        good = [x for x in side_runs if "error" not in x]
        sides[label] = (
            report.summarize_side(case, good) if good else {"error": side_runs[0]["error"]}
        )
    ok = {k: v for k, v in sides.items() if "error" not in v}
    return {
        "name": case.name,
        "stage": case.stage,
        "model": case.model,
        "dtype": report.dtype(case),
        "settings": case.config(suite.Side("", "", ""), "", threads, device=device),
        "sides": sides,
        "ratios": [x for x in (report.ratio(q, ok) for q in case.ratios) if x is not None],
        "runs": runs,
    }


def peak_spread(peaks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    medians = {
        d: [p["gflops"][d]["median"] for p in peaks if "error" not in p] for d in report.DTYPES
    }
    if not medians["fp32"]:
        return {
            d: {"median": float("nan"), "min": float("nan"), "max": float("nan")} for d in medians
        }
    return {
        d: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for d, v in medians.items()
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps, one round")
    parser.add_argument(
        "--long", action="store_true", help="the 256-token PPO and GRPO cases instead (CPU)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    parser.add_argument("--repeats", type=int, help="rounds: runs per side (default 2; --quick: 1)")
    parser.add_argument("--cases", nargs="*", help="only cases whose name contains one of these")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="cuda: the GPU suite (0.5B, bf16)"
    )
    parser.add_argument(
        "--peer-path",
        action="append",
        default=[],
        metavar="ENV=DIR",
        help="run a peer (trl-latest, trl-0.29.1) with this interpreter and DIR first on its "
        "path (pip install --target DIR) instead of a virtual environment of its own",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument(
        "--prime",
        action=argparse.BooleanOptionalAction,
        help="run each variable-length case once, untimed, before round 1 (default: on a GPU)",
    )
    return parser.parse_args(argv)


def select_cases(args: argparse.Namespace) -> list[suite.Case]:
    """The suite of ``--device`` (``--quick``'s on the CPU), narrowed by ``--cases``."""
    cpu = suite.long if args.long else suite.quick if args.quick else suite.full
    suites = {"cuda": suite.gpu, "cpu": cpu}
    cases = suites[args.device]()
    if args.cases:
        cases = [c for c in cases if any(s in c.name for s in args.cases)]
    return cases


def interpreters(cases: list[suite.Case], peer_path: list[str]) -> dict[str, Python]:
    """Every environment the cases' sides run in: ours is this interpreter; a peer this one with
    its ``--peer-path`` folder first on the path, or else its own virtual environment (made if
    missing)."""
    peer_paths = dict(p.split("=", 1) for p in peer_path)
    pythons: dict[str, Python] = {"ours": (Path(sys.executable), None)}
    for env in sorted({s.env for c in cases for s in c.sides} - {"ours"}):
        if env in peer_paths:
            pythons[env] = (Path(sys.executable), peer_paths[env])
        else:
            pythons[env] = (envs.ensure(VENVS, env, suite.ENVS[env]), None)
    return pythons


def output_paths(args: argparse.Namespace, info: dict[str, Any], date: str) -> tuple[Path, Path]:
    """``results/<machine>-<date>-<threads>t[-long|-quick][-<cases>].json`` and the Markdown
    table's file (``latest.md``, ``latest-long.md``, ``latest-partial.md`` for a partial run,
    ``latest-gpu.md``)."""
    if args.device == "cuda":
        name = "gpu-" + "-".join(info.get("gpu", "cuda").lower().split())
    else:
        cpu = info["cpu"].lower().replace("(r)", "").replace("(tm)", "")
        name = f"cpu{info['cores']}-" + "-".join(cpu.split()[:4])
    kind = "-long" if args.long else "-quick" if args.quick else ""
    kind += "-" + "+".join(args.cases) if args.cases else ""
    path = args.results / f"{name}-{date}-{args.threads}t{kind}.json"
    table_path = args.results / (
        "latest-gpu.md"
        if args.device == "cuda"
        else "latest-long.md"
        if args.long and not args.cases
        else "latest-partial.md"
        if kind
        else "latest.md"
    )
    return path, table_path


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    cases = select_cases(args)
    info = machine()
    for model in sorted({c.model for c in cases}):
        print(f"[setup] assets for {model}", flush=True)
        assets.build(CACHE, model, assets.DataSpec())
    pythons = interpreters(cases, args.peer_path)

    command = " ".join(["benchmarks/run.py", *map(shlex.quote, argv or sys.argv[1:])])
    date = datetime.date.today().isoformat()
    path, table_path = output_paths(args, info, date)
    prime = args.device == "cuda" if args.prime is None else args.prime

    def write(runs, peaks) -> None:
        info["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        results = {
            "date": date,
            "command": command,
            "machine": info,
            "device": args.device,
            "threads": args.threads,
            "repeats": len(peaks),
            "primed": prime,
            "peak_gflops": peak_spread(peaks),
            "peak_runs": peaks,
            "cases": [summarize(c, runs[c.name], args.threads, args.device) for c in cases],
        }
        args.results.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        table_path.write_text(report.markdown(results))

    run_rounds(cases, pythons, args.threads, repeats, args.device, write, prime)
    print(table_path.read_text())
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
