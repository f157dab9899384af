"""KV caches for HFRollout's decode loop, and the gathering of sharded parameters around it.

transformers' ``DynamicLayer`` grows by ``torch.cat`` at every token: each step copies the whole
cache, so a response of N tokens costs O(N²) copies and the loop slows as it goes. The
preallocated layer writes each token into a buffer sized once for the prompt plus
``max_new_tokens`` and hands attention a view of the filled prefix: no copy, and attention still
reads only the positions written so far.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache

log = logging.getLogger(__name__)


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in one (B, H, capacity, D) buffer.

    ``keys``/``values`` are views of the first ``length`` positions, so everything that reads a
    dynamic layer (mask sizes, sequence length, batch selection) works unchanged.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty(b, h, self.capacity, d, dtype=stored(key_states))
        self._v = value_states.new_empty(
            b, value_states.shape[1], self.capacity, value_states.shape[3],
            dtype=stored(value_states),
        )  # fmt: skip
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(
                f"PreallocatedLayer: {end} positions written into a cache of {self.capacity} "
                "(prompt width + max_new_tokens); HFRollout sizes it, this is a bug"
            )
        self._k[:, :, start:end] = key_states
        self._v[:, :, start:end] = value_states
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        length = self.keys.shape[-2] if self.is_initialized else 0
        if length:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]


def cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a cache keeps keys and values of ``dtype`` in: under autocast its dtype
    (attention casts them to it anyway, so storing them so rounds alike and saves a full-cache
    cast at every token: fp32 weights under bf16 autocast give fp32 keys after RoPE), else
    ``dtype``."""
    if torch.is_autocast_enabled(device.type) and dtype.is_floating_point:
        return torch.get_autocast_dtype(device.type)
    return dtype


def stored(states: Tensor) -> torch.dtype:
    return cache_dtype(states.dtype, states.device)


def make_cache(model: nn.Module, kind: str, rows: int, capacity: int, dtype, device):
    """A fresh KV cache for one rollout: "preallocated" (full-attention layers preallocated,
    sliding-window ones left dynamic), "static" (transformers' StaticCache: fixed shapes, what a
    captured decode step needs) or "dynamic" (the model's default)."""
    config = model.config
    if kind == "static":
        cache = StaticCache(config=config, max_cache_len=capacity)
        dtype = cache_dtype(dtype, device)
        cache.early_initialization(rows, *_kv_shape(config), dtype, device)
        if torch.is_autocast_enabled(
            device.type
        ):  # states come in as they are: fp32 keys, bf16 values
            for layer in cache.layers:
                layer.__class__ = _casting(type(layer))
        return cache
    cache = DynamicCache(config=config)
    if kind == "preallocated":
        cache.layers = [
            PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
            for layer in cache.layers
        ]
    return cache


_CASTING: dict[type, type] = {}


def _casting(cls: type) -> type:
    """``cls`` (a static cache layer) with an ``update`` that casts the states to the buffers'
    dtype first."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        states = key_states.to(self.keys.dtype), value_states.to(self.values.dtype)
        return cls.update(self, *states, *args, **kwargs)

    return _CASTING.setdefault(cls, type(f"Casting{cls.__name__}", (cls,), {"update": update}))


def _kv_shape(config) -> tuple[int, int]:
    text = config.get_text_config(decoder=True)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return heads, head_dim


def full_parameters(root: nn.Module | None) -> contextlib.AbstractContextManager:
    """Gather the sharded parameters of ``root`` once, for a whole rollout.

    Under FSDP (``summon_full_params``) or DeepSpeed ZeRO-3 (``GatheredParameters``) each forward
    otherwise all-gathers every layer again, once per generated token. Every rank holds the
    full policy while the context is open (see docs/multi_gpu.md). A no-op for None or for a
    module with nothing sharded (logged).
    """
    if root is None:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if any(isinstance(m, FSDP) for m in root.modules()):
        return FSDP.summon_full_params(root, writeback=False, recurse=True)
    zero3 = [p for p in root.parameters() if hasattr(p, "ds_id")]
    if zero3:
        return _zero3_gathered(root, zero3)
    log.warning(
        "HFRollout.gather_full_params: no FSDP module or ZeRO-3 parameter under %s; nothing "
        "gathered (the strategy shards nothing)",
        type(root).__name__,
    )
    return contextlib.nullcontext()


@contextlib.contextmanager
def _zero3_gathered(engine: nn.Module, params: list):
    """ZeRO-3's full parameters for the context. Gathering alone is not enough: the engine's
    module hooks would release each layer's parameters after its forward, so they are removed
    for the context and registered again after it. DeepSpeed's own context does both where the
    installed version has it."""
    try:
        from deepspeed.runtime.zero import unwrap_model_for_generation
    except ImportError:
        unwrap_model_for_generation = None
    if unwrap_model_for_generation is not None:
        with unwrap_model_for_generation(engine):
            yield
        return
    import deepspeed

    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if offload is not None:
            for p in params:
                p.ds_active_sub_modules.clear()
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            if offload is not None:
                offload._register_deepspeed_module(offload.module)
