"""Worker results -> per-side statistics, ratios against the targets, and the Markdown tables.

Throughput of one run is the work of its timed steps over their summed wall time (steps after the
warm-up): non-pad tokens for SFT, pairs for reward, episodes for PPO. Across runs: median, min and
max. Ratios pair the two sides' runs of the same round (run minutes apart, so a change of the
machine's load between rounds cancels), then take the median over rounds. MFU = 6 · (matmul
parameters) · tokens/s over the matmul peak of the case's dtype measured in the same round
(attention's T² FLOPs are not counted). Memory: peak resident memory above the import baseline.
"""

from __future__ import annotations

import statistics
from typing import Any

from suite import METRIC, Case, Ratio

PHASES = ("generation", "scoring", "update", "other")
DTYPES = ("fp32", "bf16")


def dtype(case: Case) -> str:
    """The matmul peak a case's MFU is measured against."""
    return "bf16" if case.precision == "bf16-mixed" else "fp32"


def throughput(stage: str, run: dict[str, Any]) -> float:
    warm = run["warmup"]
    seconds = sum(run["durations"][warm:])
    if stage == "sft":
        work = sum(run["tokens_per_step"][warm:])
    elif stage == "reward":
        work = run["rows_per_step"] * len(run["durations"][warm:])
    else:
        work = sum(it["episodes"] for it in run["iterations"][warm:])
    return work / seconds


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_side(case: Case, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of one side of one case over its successful runs. Each run carries the matmul
    peak measured in its own round (``peak_gflops``), which its MFU is measured against."""
    rates = [throughput(case.stage, r) for r in runs]
    out: dict[str, Any] = {
        "runs": len(runs),
        "throughput": _spread(rates),
        "by_round": {r["round"]: rate for r, rate in zip(runs, rates)},
        "peak_memory_mb": _spread([r["peak_above_baseline_mb"] for r in runs]),
    }
    if case.stage in ("sft", "reward"):
        tokens = [
            sum(r["tokens_per_step"][r["warmup"] :]) / sum(r["durations"][r["warmup"] :])
            for r in runs
        ]
        out["tokens_per_s"] = _spread(tokens)
        out["mfu"] = _spread(
            [6 * r["matmul_params"] * t / (r["peak_gflops"] * 1e9) for r, t in zip(runs, tokens)]
        )
        out["tokens_per_step"] = statistics.mean(
            t for r in runs for t in r["tokens_per_step"][r["warmup"] :]
        )
    if case.stage == "ppo":
        timed = [r["iterations"][r["warmup"] :] for r in runs]
        out["phases_s"] = {
            p: statistics.median(statistics.mean(it[p] for it in its) for its in timed)
            for p in PHASES
        }
        out["parity"] = {
            k: sorted({it[k] for its in timed for it in its})
            for k in ("episodes", "response_width", "tokens_generated", "updates")
        }
    return out


def ratio(ratio: Ratio, sides: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The ratio within each round (the two runs were minutes apart, under the same load), its
    median over rounds and range, and whether the median meets the target. Memory: medians."""
    if ratio.numerator not in sides or ratio.denominator not in sides:
        return None
    num, den = sides[ratio.numerator], sides[ratio.denominator]
    if ratio.memory:
        values = [num["peak_memory_mb"]["median"] / den["peak_memory_mb"]["median"]]
    else:
        rounds = sorted(num["by_round"].keys() & den["by_round"].keys())
        values = [num["by_round"][r] / den["by_round"][r] for r in rounds]
        if not values:
            return None
    value = statistics.median(values)
    return {
        "numerator": ratio.numerator,
        "denominator": ratio.denominator,
        "what": "peak memory" if ratio.memory else "throughput",
        "value": value,
        "range": [min(values), max(values)],
        "target": f"{'<=' if ratio.at_most else '>='} {ratio.target:g}",
        "met": value <= ratio.target if ratio.at_most else value >= ratio.target,
    }


# ------------------------------------------------------------------------------- markdown
def _fmt(spread: dict[str, float], digits: int = 1) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def markdown(results: dict[str, Any]) -> str:
    """The tables of ``latest.md``: throughput, PPO phases and parity, ratios against targets."""
    lines = [*_header(results), *_throughput_table(results), *_ppo_table(results)]
    lines += _ratio_table(results)
    return "\n".join(lines) + "\n"


def _header(results: dict[str, Any]) -> list[str]:
    """Title, machine, matmul peak, memory measure, command."""
    m = results["machine"]
    peak = results["peak_gflops"]
    gpu = results.get("device") == "cuda"
    n = next((p["n"] for p in results["peak_runs"] if "n" in p), 2048)
    where = f"{m.get('gpu')} ({m.get('gpu_memory_gb', 0):.0f} GB), host: " if gpu else ""
    return [
        f"# Benchmark: lightning_rlhf vs TRL ({results['date']})",
        "",
        f"Machine: {where}{m['cpu']}, {m['cores']} cores ({m['flags']}), {m['memory_gb']:.0f} GB; "
        f"torch {m['torch']}, {results['threads']} threads per run; load average "
        f"{m['load_start']} at start, {m['load_end']} at end.",
        f"Measured matmul peak ({n}², {'GPU' if gpu else str(results['threads']) + ' threads'}): "
        f"fp32 {_fmt(peak['fp32'])} GFLOP/s, bf16 {_fmt(peak['bf16'])} GFLOP/s. Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` (model, optimizer, activations)."
            if gpu
            else "resident memory above the process's baseline after its imports."
        ),
        f"Command: `{results['command']}` — {results['repeats']} runs per side, alternating "
        "A B A B in separate processes; median (min–max) over runs; ratios: median (min–max) of "
        "the ratio within each round."
        + (
            " Primed: each case whose lengths vary ran once, untimed, before round 1."
            if results.get("primed")
            else ""
        ),
    ]


def _throughput_table(results: dict[str, Any]) -> list[str]:
    """Every side of every case: throughput, tokens/s, MFU, peak memory."""
    lines = [
        "",
        "| case | side | throughput | tokens/s | MFU (of the case's dtype peak) | peak memory MB |",
        "|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        unit = METRIC[case["stage"]]
        for label, s in case["sides"].items():
            if "error" in s:
                lines.append(f"| {case['name']} | {label} | failed: {s['error']} | | | |")
                continue
            tok = _fmt(s["tokens_per_s"], 0) if "tokens_per_s" in s else ""
            mfu = _fmt({k: 100 * v for k, v in s["mfu"].items()}, 0) + " %" if "mfu" in s else ""
            lines.append(
                f"| {case['name']} | {label} | {_fmt(s['throughput'], 2)} {unit} | {tok} | {mfu} "
                f"| {_fmt(s['peak_memory_mb'], 0)} |"
            )
    return lines


def _ppo_table(results: dict[str, Any]) -> list[str]:
    """PPO cases: seconds per phase and the work per iteration of each side (none: no rows)."""
    ppo = [c for c in results["cases"] if c["stage"] == "ppo"]
    if not ppo:
        return []
    lines = [
        "",
        "PPO, seconds per iteration (median over runs of the mean over timed iterations), "
        "and the work per iteration on each side:",
        "",
        "| case | side | generation | scoring | update | other | episodes | response tokens "
        "| tokens generated | optimizer steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in ppo:
        for label, s in case["sides"].items():
            if "error" in s:
                continue
            ph, par = s["phases_s"], s["parity"]
            lines.append(
                f"| {case['name']} | {label} | "
                + " | ".join(f"{ph[p]:.2f}" for p in PHASES)
                + " | "
                + " | ".join(
                    "/".join(map(str, par[k]))
                    for k in ("episodes", "response_width", "tokens_generated", "updates")
                )
                + " |"
            )
    return lines


def _ratio_table(results: dict[str, Any]) -> list[str]:
    """Every ratio against its target, and ours' MFU against the CPU suite's 50 %."""
    gpu = results.get("device") == "cuda"
    lines = ["", "| case | ratio | value (range) | target | met |", "|---|---|---|---|---|"]
    for case in results["cases"]:
        for r in case["ratios"]:
            what = "peak memory" if r["what"] == "peak memory" else METRIC[case["stage"]]
            lines.append(
                f"| {case['name']} | {r['numerator']} ÷ {r['denominator']} ({what}) | "
                f"{r['value']:.2f} ({r['range'][0]:.2f}–{r['range'][1]:.2f}) | {r['target']} | "
                f"{'yes' if r['met'] else 'no'} |"
            )
        ours = case["sides"].get("ours", {})
        target = not gpu  # the MFU target is the CPU suite's
        if case["stage"] == "sft" and "mfu" in ours and case["model"] != "llama-5m":
            mfu = ours["mfu"]
            lines.append(
                f"| {case['name']} | ours MFU ({case['dtype']} peak) | {100 * mfu['median']:.0f} % "
                f"({100 * mfu['min']:.0f}–{100 * mfu['max']:.0f}) | "
                + (f">= 50 % | {'yes' if mfu['median'] >= 0.5 else 'no'} |" if target else "— | |")
            )
    return lines
