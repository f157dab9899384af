"""The benchmark workers' shared entry point: nothing read or run at import, one result format."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

WORKERS = Path(__file__).resolve().parents[2] / "benchmarks" / "workers"


def _common():
    spec = importlib.util.spec_from_file_location("bench_workers_common", WORKERS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workers_read_no_config_at_import():
    """Imported with arguments that are no config (as a profiler or a test would import them),
    our side's workers and their shared modules read nothing and run nothing."""
    code = (
        f"import sys; sys.path.insert(0, {str(WORKERS)!r}); "
        "import common, lit, peak, raw_sft, ours_sft, ours_reward, ours_ppo, ours_grpo; "
        "assert all(callable(m.run) for m in (peak, raw_sft, ours_sft, ours_reward, ours_ppo, "
        "ours_grpo))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "/no/such/config.json", "/no/such/result.json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_run_worker_writes_the_result_report_reads(tmp_path):
    common = _common()
    cfg = {"warmup": 1, "threads": 1, "seed": 3, "device": "cpu", "batch_size": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    seen = {}

    def run(c):
        seen.update(c)
        return {"durations": [0.5, 0.25], "tokens_per_step": [7, 8], "rows_per_step": 2}

    threads = torch.get_num_threads()
    try:
        out = common.run_worker(run, [str(tmp_path / "cfg.json"), str(tmp_path / "out.json")])
    finally:
        torch.set_num_threads(threads)  # run_worker sets the config's
    assert seen == cfg
    written = json.loads((tmp_path / "out.json").read_text())
    assert written == out
    assert list(written)[:3] == ["config", "durations", "warmup"]
    assert written["durations"] == [0.5, 0.25] and written["warmup"] == 1
    assert written["tokens_per_step"] == [7, 8] and written["threads"] == 1
    for key in ("peak_above_baseline_mb", "baseline_mb", "peak_rss_mb", "versions", "memory"):
        assert key in written


def test_peak_worker(tmp_path):
    cfg = {"warmup": 0, "threads": 1, "device": "cpu", "n": 64, "reps": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, str(WORKERS / "peak.py"), str(tmp_path / "cfg.json"), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r").read_text())
    assert result["config"] == cfg and result["durations"] == [] and result["n"] == 64
    assert set(result["gflops"]) == {"fp32", "bf16"}
    assert len(result["gflops"]["fp32"]["all"]) == 2
