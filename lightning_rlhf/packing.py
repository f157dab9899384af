"""Does a model keep packed sequences apart? A numerical probe run before packed training.

Packing (SFT ``data.packing``, reward ``model.padding_free``) puts several sequences in one row
with ``position_ids`` restarting at 0 for each and no attention mask; transformers turns that into
block-diagonal attention for the architectures whose attention reads ``position_ids``. An
architecture that ignores them (OPT, which learns absolute positions from the attention mask)
lets each sequence attend to the ones packed before it and trains on wrong logits without a
word. The probe compares one packed forward of two short rows with their separate forwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (input_ids (B, T), attention_mask (B, T) or None, position_ids (B, T) or None) -> (B, T, ...)
Forward = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]

PROBE_LENGTHS = (5, 3)  # two rows: the second would see the first's 5 tokens if packing leaked


def packing_disagreement(forward: Forward, vocab_size: int, device: torch.device) -> float:
    """``max |packed - separate| / max(max |separate|, 1e-6)`` over the two probe rows' outputs.

    The rows are fixed token ids (``7 + 3 i mod V``), forwarded once each without padding and
    once packed into one row with position ids ``0..4, 0..2``.

    Args:
        forward: the model's forward as the packed stage calls it (see :data:`Forward`).
        vocab_size: ids are taken below it.
        device: where the model is.

    Returns:
        the largest difference, relative to the largest output: 0 when packing is exact.
    """
    total = sum(PROBE_LENGTHS)
    ids = (7 + 3 * torch.arange(total, device=device)) % vocab_size  # (total,)
    rows = ids.split(list(PROBE_LENGTHS))
    with torch.no_grad():
        separate = torch.cat(
            [forward(r.unsqueeze(0), torch.ones_like(r).unsqueeze(0), None)[0] for r in rows]
        ).float()  # (total, ...)
        positions = torch.cat([torch.arange(n, device=device) for n in PROBE_LENGTHS])
        packed = forward(ids.unsqueeze(0), None, positions.unsqueeze(0))[0].float()
    scale = separate.abs().max().clamp(min=1e-6)
    return ((packed - separate).abs().max() / scale).item()


def check_packing(model: torch.nn.Module, forward: Forward, option: str) -> None:
    """Raise when ``model`` does not keep packed sequences apart, naming its type and ``option``.

    The tolerance is relative: 1e-3 in float32 (rounding of the two attention paths), 3e-2 in a
    half-precision dtype. The model is probed in eval mode (no dropout) and left as it was.
    """
    param = next(model.parameters())
    tolerance = 1e-3 if param.dtype in (torch.float32, torch.float64) else 3e-2
    config = model.config
    was_training = model.training
    model.eval()
    try:
        diff = packing_disagreement(forward, config.vocab_size, param.device)
    finally:
        model.train(was_training)
    if not diff <= tolerance:  # NaN fails too
        raise ValueError(
            f"{option}: the {config.model_type} model ({type(model).__name__}) does not keep "
            f"packed sequences apart: a packed forward of two short rows differs from their "
            f"separate forwards by {diff:.3g} of the largest output (tolerance {tolerance:g}), so "
            f"each sequence would attend to the ones packed before it. Set {option} false for "
            f"{config.model_type}, or use an architecture whose attention reads position_ids "
            "(Llama, Qwen2, Mistral, GPT-NeoX, ...)"
        )


def causal_lm_forward(model: torch.nn.Module) -> Forward:
    """The SFT stage's forward (its logits), as :func:`check_packing` calls it."""

    def forward(ids: Tensor, mask: Tensor | None, positions: Tensor | None) -> Tensor:
        return model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
        ).logits

    return forward
