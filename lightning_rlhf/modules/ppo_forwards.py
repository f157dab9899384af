"""The forwards of the RL stage over a rollout's prompts and responses: one call of a causal LM
gives the logits at the response positions and, for a value head on its trunk, the states."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_rlhf.critics import response_states
from lightning_rlhf.model_outputs import padded_positions
from lightning_rlhf.rollout import tempered
from lightning_rlhf.types import Rollout, Sequences


def sequence_inputs(s: Sequences | Rollout, idx: Tensor | slice = slice(None)):
    """(ids, mask, positions), each (b, P + R): rows ``idx`` of the prompts and responses joined,
    positions counted from each row's first real token (prompts are left-padded)."""
    ids = torch.cat([s.query_ids[idx], s.response_ids[idx]], dim=1)  # (b, P + R)
    mask = torch.cat([s.query_mask[idx], s.response_mask[idx]], dim=1)
    return ids, mask, padded_positions(mask)


def response_outputs(
    model: nn.Module, s: Sequences | Rollout, idx, temperature: float, hidden: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Tempered logits at the response positions, (b, R, V) (position t predicts response token
    t), and with ``hidden`` the last layer's states before each response token, (b, R, H)."""
    ids, mask, positions = sequence_inputs(s, idx)
    resp_len, length = s.response_ids.shape[1], ids.shape[1]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        # the LM head only where a response token is predicted; indices, not a count: the
        # gathered states are contiguous, so a frozen model's head stays one matrix multiply
        # (a sliced view sends it to a batched one over copies of the weight, 2x slower on CPU)
        logits_to_keep=torch.arange(length - resp_len - 1, length - 1, device=ids.device),
        output_hidden_states=hidden,
        use_cache=False,
    )
    states = response_states(out.hidden_states[-1], resp_len) if hidden else None
    return tempered(out.logits, temperature), states
