"""HFRollout, the default engine: batched, KV-cached sampling with the policy's own forward.

One prefill forward over the left-padded prompts, then one single-token forward per new token
against a KV cache, under no_grad and in eval mode (no dropout; gradient checkpointing, training
only, would drop the cache). Rows that emitted EOS leave the decode batch (their cache rows,
positions and mask go with them), so a long-tailed batch stops paying for its finished rows.
The uniform numbers of each step are still drawn for the whole batch and indexed by row, so a
row's tokens given the seed are those of a loop that keeps every row to the end; only the float
rounding of the smaller batch's matrix products can differ.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_rlhf.model_outputs import padded_positions
from lightning_rlhf.rollout.base import RolloutEngine
from lightning_rlhf.rollout.cache import cache_dtype, full_parameters, make_cache
from lightning_rlhf.rollout.cpu_linear import can_pack, log_once, packed_linears
from lightning_rlhf.rollout.sampling import (
    Generation,
    SamplingOptions,
    response_mask,
    sample_tokens,
    uniforms,
)

log = logging.getLogger(__name__)


class HFRollout(RolloutEngine):
    """Sampling with the live policy module: always samples from the current weights.

    Args:
        compact_finished: rows that emitted EOS leave the decode batch (off: every row is
            forwarded until the last one ends, as a plain loop does).
        cache: the KV cache: "preallocated" (one buffer per layer sized for prompt +
            max_new_tokens, written in place), "dynamic" (transformers' default, concatenated at
            every token) or "static" (transformers' StaticCache: fixed shapes, attention over the
            whole buffer every step; finished rows are not compacted).
        compile_decode: on CUDA, decode with a StaticCache and a ``torch.compile``
            (mode "reduce-overhead", CUDA graphs) step; finished rows stay in the batch so that
            the shapes do not change. Elsewhere, or where compiling fails, the eager path runs
            and the reason is logged once.
        gather_full_params: under FSDP / DeepSpeed ZeRO-3, gather the policy's full parameters
            once per rollout instead of layer by layer at every token (every rank then holds the
            whole policy: see docs/multi_gpu.md).
        pack_cpu_weights: on a CPU, the linear layers run oneDNN on weights reordered once per
            rollout (``rollout/cpu_linear.py``; one more copy of the linear weights while it
            runs); off: torch's own CPU linear.
    """

    def __init__(
        self,
        compact_finished: bool = True,
        cache: Literal["preallocated", "dynamic", "static"] = "preallocated",
        compile_decode: bool = False,
        gather_full_params: bool = False,
        pack_cpu_weights: bool = True,
    ) -> None:
        super().__init__()
        self.pack_cpu_weights = pack_cpu_weights
        self.compact_finished = compact_finished
        self.cache = cache
        self.compile_decode = compile_decode
        self.gather_full_params = gather_full_params
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (model, its compiled forward)
        self._cache: tuple[tuple, object] | None = None  # (shape key, the compiled step's cache)
        self.compile_fallback: str | None = None  # why the compiled step is not used, if it isn't

    @torch.no_grad()
    def generate(
        self, prompt_ids: Tensor, prompt_mask: Tensor, options: SamplingOptions
    ) -> Generation:
        model = self._bound()
        was_training = model.training
        model.eval()
        try:
            with (
                full_parameters(self.sharded if self.gather_full_params else None),
                self._packed(model, prompt_ids.shape[0]),
            ):
                step = self._compiled_step(model)
                if step is not None:
                    try:
                        return self._decode(model, prompt_ids, prompt_mask, options, step)
                    except Exception as error:  # a capture failure: redo this rollout eagerly
                        self._fall_back(f"the compiled step failed ({error!r})")
                return self._decode(model, prompt_ids, prompt_mask, options, None)
        finally:
            model.train(was_training)

    def _decode(self, model, ids: Tensor, prompt_mask: Tensor, sampling: SamplingOptions, step_fn):
        if step_fn is not None:  # the captured step's shapes: prompt widths in steps of 32
            ids, prompt_mask = _pad_left(ids, prompt_mask, 32, self.pad_token_id)
        (B, P), N, device = ids.shape, sampling.max_new_tokens, ids.device
        kind = "static" if step_fn is not None else self.cache
        compact = self.compact_finished and kind != "static"
        cache = self._static_cache(model, B, P + N) if step_fn is not None else None
        out, cache, mask, positions = _prefill(model, ids, prompt_mask, N, kind, cache)
        arg = _cache_argument(model)
        step_fn = model if step_fn is None else step_fn  # a compiled module has no truth value
        rows = torch.arange(B, device=device)  # the batch rows still decoded
        next_position = positions[:, -1:] + 1  # (A, 1)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        for step in range(N):
            banned = self.eos_token_id if step < sampling.min_new_tokens else None
            u = uniforms(B, device)[rows] if sampling.temperature > 0 else None
            token, logprob = sample_tokens(out.logits[:, -1], sampling, banned, u)  # (A,)
            token = token.masked_fill(done[rows], self.pad_token_id)
            tokens.append(_spread(token, rows, B, self.pad_token_id))
            logprobs.append(_spread(logprob, rows, B, 0.0))
            done[rows] = done[rows] | (token == self.eos_token_id)
            live = ~done[rows]
            n_live = int(live.sum())  # the loop's one read of a device value per token
            if step + 1 == N or self._all_done(n_live == 0):
                break
            if compact and n_live < len(rows):
                # synced ranks keep forwarding after their rows ended: keep one row to forward
                keep = live.nonzero().squeeze(1) if n_live else rows.new_zeros(1)
                rows, token, next_position = rows[keep], token[keep], next_position[keep]
                mask = mask[keep]
                cache.batch_select_indices(keep)
            if step_fn is not model:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are read
            out = step_fn(
                input_ids=token[:, None],  # position P + step: the cache then holds P + step + 1
                attention_mask=mask if kind == "static" else mask[:, : P + step + 1],
                position_ids=next_position,
                use_cache=True,
                **{arg: cache},
            )
            next_position = next_position + 1
        response = torch.stack(tokens, dim=1)  # (B, R)
        resp_mask = response_mask(response, self.eos_token_id)
        return Generation(
            response.masked_fill(resp_mask == 0, self.pad_token_id),
            resp_mask,
            torch.stack(logprobs, dim=1) * resp_mask,
        )

    def _packed(self, model: nn.Module, rows: int) -> contextlib.AbstractContextManager:
        """``packed_linears`` where it applies: a CPU policy that nothing shards."""
        if not self.pack_cpu_weights or _device(model).type != "cpu" or self.sharded is not None:
            return contextlib.nullcontext()
        reason = can_pack(model)
        if reason is not None:
            log_once(reason)
            return contextlib.nullcontext()
        return packed_linears(model, rows)

    def _all_done(self, local: bool) -> bool:
        if self.synced and dist.is_available() and dist.is_initialized():
            # FSDP/ZeRO-3: each forward is a collective; every rank stops at the same step
            pending = torch.tensor([0.0 if local else 1.0], device=_device(self.model))
            dist.all_reduce(pending)
            return bool(pending.item() == 0)
        return local

    def _static_cache(self, model: nn.Module, rows: int, capacity: int):
        """The compiled step's StaticCache, reset and reused while its shape holds: the captured
        graphs read its buffers at fixed addresses, a new cache per rollout re-records them."""
        device = _device(model)
        dtype = cache_dtype(next(model.parameters()).dtype, device)
        key = (rows, capacity, dtype, device)
        if self._cache is not None and self._cache[0] == key:
            self._cache[1].reset()
        else:
            self._cache = None  # its memory first
            self._cache = (key, make_cache(model, "static", rows, capacity, dtype, device))
        return self._cache[1]

    def _compiled_step(self, model: nn.Module):
        """The compiled decode forward, or None (eager) with the reason logged once."""
        if not self.compile_decode or self.compile_fallback is not None:
            return None
        device = _device(model)
        if device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, the policy is on {device}")
            return None
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model, mode="reduce-overhead", dynamic=False))
        return self._compiled[1]

    def _fall_back(self, reason: str) -> None:
        self.compile_fallback = reason
        log.warning("HFRollout(compile_decode=True): %s; decoding eagerly from now on", reason)


def _prefill(model: nn.Module, ids: Tensor, prompt_mask: Tensor, new: int, kind: str, cache=None):
    """The prompts' forward into ``cache`` (default: a fresh one) of prompt width + ``new``
    positions: its output, the cache, the (B, P + new) mask of every position a row will have,
    the (B, P) positions."""
    (B, P), device = ids.shape, ids.device
    if cache is None:
        cache = make_cache(model, kind, B, P + new, next(model.parameters()).dtype, device)
    # causal attention never reads ahead of the token being decoded, so the future's ones are
    # harmless and no mask is grown per token
    mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, new, dtype=torch.long)], 1)
    positions = padded_positions(prompt_mask.long())  # (B, P)
    out = model(
        input_ids=ids,
        attention_mask=mask if kind == "static" else mask[:, :P],
        position_ids=positions,
        use_cache=True,
        # the LM head only where the next token is drawn; an index tensor gathers a contiguous
        # state, so a frozen model's head is one matrix multiply, not one per row
        logits_to_keep=torch.tensor([P - 1], device=device),
        **{_cache_argument(model): cache},
    )
    return out, cache, mask, positions


def _pad_left(ids: Tensor, mask: Tensor, multiple: int, pad: int) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded prompts padded on the left to a width that is a multiple of
    ``multiple`` (masked: the responses are those of the unpadded prompts)."""
    extra = -ids.shape[1] % multiple
    if not extra:
        return ids, mask
    return (
        torch.cat([ids.new_full((ids.shape[0], extra), pad), ids], 1),
        torch.cat([mask.new_zeros(mask.shape[0], extra), mask], 1),
    )


def _spread(values: Tensor, rows: Tensor, batch: int, fill) -> Tensor:
    """(batch,) ``values`` at ``rows``, ``fill`` at the rows that left the decode batch."""
    if len(rows) == batch:
        return values
    return values.new_full((batch,), fill).index_copy_(0, rows, values)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model: nn.Module) -> str:
    """The forward's KV-cache argument: transformers 5.2x renamed ``past_key_values`` to ``cache``
    (the old name warns until it is removed)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    sampling: SamplingOptions,
    eos_token_id: int,
    pad_token_id: int,
    synced: bool = False,
) -> Generation:
    """Sample responses to left-padded prompts with a default ``HFRollout``.

    Args:
        input_ids: (B, P) left-padded prompt ids.
        attention_mask: (B, P).
        synced: keep generating until every rank is done (FSDP/ZeRO-3).
    """
    engine = HFRollout().bind(model, eos_token_id, pad_token_id, synced=synced)
    return engine.generate(input_ids, attention_mask, sampling)
