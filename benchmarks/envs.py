"""The peers' virtual environments, created once under ``benchmarks/.venvs/<name>``.

torch is installed first and pinned (the CPU wheel; an unpinned torch would pull a multi-GB CUDA
build), then TRL with the transformers version of our own environment, so both sides run the same
model code. A stamp file records what was installed; a changed requirement rebuilds the env.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import venv
from pathlib import Path

TORCH = "torch==2.13.0"


def ensure(root: Path, name: str, requirement: str) -> Path:
    """The python of env ``name`` with ``requirement`` installed (created if missing)."""
    env = root / name
    python = env / "bin" / "python"
    wanted = [TORCH, requirement, f"transformers=={md.version('transformers')}"]
    stamp = env / "benchmark-requirements.txt"
    if python.exists() and stamp.exists() and stamp.read_text().split() == wanted:
        return python
    print(f"[setup] creating {env} with {' '.join(wanted)}", flush=True)
    venv.create(env, with_pip=True, clear=True)
    for packages in ([TORCH], wanted[1:]):  # torch first, alone
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            check=True,
            stdout=sys.stdout,
            stderr=subprocess.STDOUT,
        )
    stamp.write_text("\n".join(wanted) + "\n")
    return python
