"""The collator family: one padding function, one collate per batch type."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from lightning_rlhf.types import LMBatch, PreferenceBatch, PromptBatch


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows whose lengths sum to at most ``capacity``: longest
    first, each into the fullest row it still fits (a new row when none has room; a length above
    ``capacity`` gets a row of its own). O(n log n) searches: the rows' free room is kept sorted.
    """
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), ascending
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(free, (lengths[i], -1))  # the least room that still fits
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - lengths[i] > 0:
            bisect.insort(free, (room - lengths[i], r))
    return rows


def pad(
    seqs: Sequence[Sequence[int]], value: int, side: str = "right", multiple: int = 1
) -> torch.Tensor:
    """(len(seqs), width) long tensor, ``width`` the longest length rounded up to ``multiple``;
    ``side="left"`` puts the padding first."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            target = out[i, width - len(s) :] if side == "left" else out[i, : len(s)]
            target.copy_(torch.as_tensor(s, dtype=torch.long))
    return out


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """(N,) flat positions ``b * T + t`` of a (B, T) batch whose next token is learned
    (``labels[b, t + 1] != -100``), row-major."""
    learned = torch.nn.functional.pad(labels[:, 1:] != -100, (0, 1))  # (B, T)
    return learned.reshape(-1).nonzero().squeeze(1)


def collate_lm(examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int = 1) -> LMBatch:
    """Examples {"input_ids", "labels"[, "position_ids"]} -> right-padded LMBatch, with the
    positions of its learned tokens."""
    m = pad_to_multiple_of
    ids = [e["input_ids"] for e in examples]
    position_ids = None
    if "position_ids" in examples[0]:
        position_ids = pad([e["position_ids"] for e in examples], 0, multiple=m)
    labels = pad([e["labels"] for e in examples], -100, multiple=m)
    return LMBatch(
        input_ids=pad(ids, pad_token_id, multiple=m),
        attention_mask=pad([[1] * len(s) for s in ids], 0, multiple=m),
        labels=labels,
        position_ids=position_ids,
        loss_index=loss_positions(labels),
    )


def collate_prompts(
    examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int = 1
) -> PromptBatch:
    """Examples {"prompt_ids", "prompt"} -> left-padded PromptBatch."""
    ids = [e["prompt_ids"] for e in examples]
    return PromptBatch(
        input_ids=pad(ids, pad_token_id, side="left", multiple=pad_to_multiple_of),
        attention_mask=pad([[1] * len(s) for s in ids], 0, "left", pad_to_multiple_of),
        prompts=[e["prompt"] for e in examples],
    )


def collate_preferences(
    examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int = 1
) -> PreferenceBatch:
    """Examples {"chosen_ids", "rejected_ids", "margin", "prompt", "chosen", "rejected"}.

    With "chosen_response_len"/"rejected_response_len" (the response's tokens at the end of each
    ids list) the batch carries ``response_mask`` and ``response_index``; with "index" it carries
    the pairs' ``index``.
    """
    m = pad_to_multiple_of
    ids = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    input_ids = pad(ids, pad_token_id, multiple=m)
    response_mask = response_index = None
    if all("chosen_response_len" in e for e in examples):
        lengths = [e["chosen_response_len"] for e in examples] + [
            e["rejected_response_len"] for e in examples
        ]
        response_mask = pad(
            [[0] * (len(s) - n) + [1] * n for s, n in zip(ids, lengths)], 0, multiple=m
        )
        response_index = loss_positions(input_ids.masked_fill(response_mask == 0, -100))
    index = None
    if all("index" in e for e in examples):
        index = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return PreferenceBatch(
        input_ids=input_ids,
        attention_mask=pad([[1] * len(s) for s in ids], 0, multiple=m),
        margin=torch.tensor([float(e.get("margin", 0.0)) for e in examples]),
        prompts=[e["prompt"] for e in examples],
        responses=[e["chosen"] for e in examples] + [e["rejected"] for e in examples],
        response_mask=response_mask,
        index=index,
        response_index=response_index,
    )
