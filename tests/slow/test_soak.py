"""PPO over thousands of episodes holds steady memory: a short run of benchmarks/soak_ppo.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_ppo.py"


@pytest.mark.slow
def test_ppo_memory_is_steady_over_3200_episodes(tmp_path):
    """100 iterations x 16 prompts x 2 samples on the 2-layer tiny model (~25 s on 2 cores)."""
    args = ["--iterations", "100", "--prompts", "16", "--hidden-size", "32", "--num-layers", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
    )
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["iterations"] == 100 and result["episodes"] == 3200
    assert len(result["rss_kib_per_iteration"]) == 100  # sampled every iteration
    # growth per iteration after warm-up; a leaked rollout (tens of KiB) would exceed the bound
    assert result["steady"] and result["slope_kib_per_iteration"] < 16.0, result
    assert proc.returncode == 0, proc.stderr[-3000:]
