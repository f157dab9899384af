"""Markdown reports with plots for ``evaluate`` (policies) and ``evaluate-rm`` (reward models)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _interval(d: dict) -> str:
    return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def policy_report(summary: dict, records: list[dict], out_dir: str | Path) -> Path:
    """``report.md`` for ``evaluate``: scores with intervals, the win rate, and two plots (reward
    distributions of the policies, win rate by length difference)."""
    plt, out = _pyplot(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sides = [s for s in ("policy", "against") if s in summary]
    lines = [
        "# Evaluation",
        "",
        f"{summary['num_prompts']} prompts from `{summary['prompts']}`, "
        f"{summary['samples_per_prompt']} sample(s) each, reward `{summary['reward']}`.",
        "",
        "| policy | mean score (95% CI) | mean length (tokens) |",
        "|---|---|---|",
    ]
    for side in sides:
        s = summary[side]
        lines.append(f"| `{s['model']}` | {_interval(s['score'])} | {s['length']:.1f} |")
    fig, ax = plt.subplots(figsize=(5, 3))
    for side in sides:
        scores = [r["score"] for rec in records for r in rec[side]]
        ax.hist(scores, bins=20, alpha=0.5, label=summary[side]["model"])
    ax.set_title("reward of the responses", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reward_distribution.png", dpi=100)
    plt.close(fig)
    lines += ["", "![reward distribution](reward_distribution.png)", ""]
    if "win_rate" in summary:
        w = summary["win_rate"]
        lines += [
            f"**Win rate** of `{summary['policy']['model']}` over `{summary['against']['model']}`: "
            f"{_interval(w['win_rate'])} ({w['wins']} wins, {w['ties']} ties, {w['losses']} losses).",
            "",
            "Length-controlled win rate (at equal response lengths): "
            f"{_interval(summary['length_controlled_win_rate'])}.",
            "",
            "| length difference (A − B, tokens) | prompts | win rate |",
            "|---|---|---|",
        ]
        buckets = summary["win_rate_by_length"]
        lines += [f"| {b['bucket']} | {b['n']} | {b['win_rate']:.3f} |" for b in buckets]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar([b["bucket"] for b in buckets], [b["win_rate"] for b in buckets])
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_title("win rate by length difference", fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "win_rate_by_length.png", dpi=100)
        plt.close(fig)
        lines += ["", "![win rate by length](win_rate_by_length.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def reward_report(result: dict, out_dir: str | Path, model: str = "") -> Path:
    """``report.md`` for ``evaluate-rm``: accuracy per subset, the ties score, and two plots (the
    reliability diagram of σ(r_w − r_l), the histogram of margins)."""
    plt, out = _pyplot(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Reward model {model}".rstrip(),
        "",
        f"{result['rows']} rows of `{result['data']}`.",
    ]
    if "accuracy" in result:
        lines += ["", "| subset | accuracy (95% CI) | rows |", "|---|---|---|"]
        lines += [f"| {k} | {_interval(v)} | {v['n']} |" for k, v in result["accuracy"].items()]
    if "ties" in result:
        lines += ["", f"Ties score (RewardBench 2): {result['ties']['score']:.3f}."]
    if "calibration" in result:
        cal = result["calibration"]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0.5, 1], [0.5, 1], color="grey", lw=0.8)
        ax.plot([b["confidence"] for b in cal["bins"]], [b["accuracy"] for b in cal["bins"]], "o-")
        ax.set_xlabel("confidence σ(|r_w − r_l|)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"calibration (ECE {cal['ece']:.3f})", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=100)
        plt.close(fig)
        hist = result["margins"]
        fig, ax = plt.subplots(figsize=(5, 3))
        edges = hist["edges"]
        ax.bar(edges[:-1], hist["counts"], width=edges[1] - edges[0], align="edge")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title("margins r_w − r_l", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "margins.png", dpi=100)
        plt.close(fig)
        length = result["length"]
        lines += [
            "",
            f"Expected calibration error {cal['ece']:.3f}. Correlation of reward with length "
            f"(characters) {length['reward_length_corr']:.3f}; the longer response scored higher "
            f"in {length['longer_preferred']:.3f} of the pairs of different lengths.",
            "",
            "![calibration](calibration.png) ![margins](margins.png)",
        ]
    diff = result.get("batch_invariance_max_abs_diff")
    if diff is not None:
        lines += ["", f"Largest score change between batch sizes 1 and 32: {diff:.2e}."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
