"""oneDNN matrix products with weights reordered once per rollout, for HFRollout on a CPU.

A decode step multiplies a few dozen rows by every weight matrix of the model. torch's CPU
``linear`` goes to the BLAS, which re-reads each weight in its row-major layout at every step;
oneDNN's ``_linear_pointwise`` takes a weight reordered ahead into its blocked layout. On a
2-core AMD EPYC (fp32, 64 rows; ``benchmarks/cpu_kernels.py``) the 32k-vocabulary head took
24.7 ms a step through the BLAS and 10.6 ms through oneDNN, an MLP projection 0.76 and 0.45.
The weights do not change during a rollout (no_grad, eval), so one reorder serves every step; the
reordered copies live for the rollout and are freed after it (one more copy of every linear
weight meanwhile).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
_logged: set[str] = set()


def can_pack(model: nn.Module) -> str | None:
    """None when ``packed_linears`` applies to ``model``, else why not."""
    if not torch.backends.mkldnn.is_available() or not hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    ):
        return "this torch build has no oneDNN linear"
    if torch.is_autocast_enabled("cpu"):
        return "CPU autocast is on (its casts are the BLAS path's)"
    return None


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[int]:
    """Within the context, every plain ``nn.Linear`` of ``model`` with a float32 or bfloat16 CPU
    weight runs oneDNN on a reordered copy of its weight (``rows``: the batch the layout is tuned
    for). Layers whose ``forward`` is already wrapped (accelerate's hooks) and subclasses
    (quantised layers) keep theirs. Yields how many layers were packed."""
    packed: list[nn.Linear] = []
    try:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (
                type(module) is not nn.Linear
                or "forward" in module.__dict__
                or weight is None
                or weight.device.type != "cpu"
                or weight.dtype not in (torch.float32, torch.bfloat16)
            ):
                continue
            reordered = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(rows, 1))
            bias = None if module.bias is None else module.bias.detach()
            module.forward = functools.partial(_linear, reordered, bias)
            packed.append(module)
        yield len(packed)
    finally:
        for module in packed:
            del module.forward  # the class's forward again


def _linear(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def log_once(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        log.info("HFRollout(pack_cpu_weights=True): not packing: %s", reason)
