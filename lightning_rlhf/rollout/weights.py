"""The policy's weights as an inference engine needs them: Hugging Face names, LoRA merged.

An engine that holds its own copy of the policy (``VLLMRollout``) is sent the *effective*
weights of the live module: for a LoRA layer ``W + ΔW`` of the active adapter (peft's
``get_delta_weight``: ``scale · B @ A``), computed tensor by tensor without touching the training
module; the LoRA factors, other adapters (PPO's critic) and value heads are not sent. The
reference policy (adapters off) is never what is sent: the active adapter is the policy's.
A tied output layer is left out (``lm_head.weight`` is the input embedding); the engine re-ties.

Tensors come out one at a time and are packed into buckets of at most ``bucket_bytes``, so the
extra memory of a push is one bucket, not a second model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

# peft's own submodules of a LoRA layer: never part of the effective weights
_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_dropout")
_LORA_PARTS += ("lora_magnitude_vector",)


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``model`` (a peft model's base, else ``model``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _active_adapter(model: nn.Module) -> str | None:
    active = getattr(model, "active_adapter", None)
    if isinstance(active, list | tuple):  # peft returns a list when several are active
        active = active[0] if active else None
    return active if isinstance(active, str) else None


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


@torch.no_grad()
def effective_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the causal LM ``model`` samples from, with Hugging Face checkpoint names.

    For a LoRA layer with the active adapter: ``name.weight = W + get_delta_weight(adapter)``
    (a new tensor; the module is unchanged), its bias as is. A LoRA layer whose adapter is merged
    already, or that lacks the active adapter, yields ``W``. Tied output embeddings are left out.
    """
    base = base_causal_lm(model)
    adapter = _active_adapter(model)
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    skip: set[str] = set()  # module prefixes whose parameters were yielded (or dropped) already
    for name, module in base.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if _is_lora_layer(module):
            skip.add(name)
            yield from _lora_layer_weights(name, module, adapter)
            continue
        if name.rsplit(".", 1)[-1] in _LORA_PARTS:
            skip.add(name)
            continue
        for pname, tensor in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if not (tied and full == "lm_head.weight"):
                yield full, tensor.detach()


def _lora_layer_weights(name: str, module: nn.Module, adapter: str | None):
    layer = module.base_layer
    weight = layer.weight.detach()
    merged = adapter in getattr(module, "merged_adapters", [])
    if adapter is not None and adapter in module.lora_A and not merged:
        delta = module.get_delta_weight(adapter)  # scale · B @ A, in the weight's layout
        weight = weight + delta.to(weight.dtype)
    yield f"{name}.weight", weight
    if getattr(layer, "bias", None) is not None:
        yield f"{name}.bias", layer.bias.detach()


def buckets(named: Iterator[tuple[str, Tensor]], bucket_bytes: int) -> Iterator[dict[str, Tensor]]:
    """Consecutive groups of ``named`` whose tensors total at most ``bucket_bytes`` each (a
    tensor larger than that is a bucket of its own). Tensors come out contiguous, on the host."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: dict[str, Tensor] = {}
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor.detach().to("cpu").contiguous()
        size += nbytes
    if bucket:
        yield bucket
