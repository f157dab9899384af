"""LoRA adapters (peft): building a policy's or a scalar model's adapters, and running a model
with one adapter, or with none (a LoRA policy's πref), without touching what trains."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from lightning_rlhf.models import LoraOptions


def lora_config(lora: LoraOptions, task_type: str, modules_to_save=None):
    """peft's ``LoraConfig`` of ``lora`` for a model of ``task_type`` ("CAUSAL_LM", "SEQ_CLS")."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def apply_lora(model: nn.Module, lora: LoraOptions, task_type: str, modules_to_save=None):
    """``model`` as a peft model with new adapters of ``lora`` (its base weights frozen)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, task_type, modules_to_save))


@contextlib.contextmanager
def _requires_grad_kept(model: nn.Module):
    # peft's set_adapter, and its disable_adapter on exit, freeze every adapter but the active one;
    # a tensor frozen between its forward and the backward gets no gradient
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def adapter_active(model: nn.Module, name: str):
    """Run a peft model's LoRA layers with adapter ``name``; afterwards the previous adapter is
    active again and every parameter's ``requires_grad`` is as before."""
    previous = model.active_adapter
    with _requires_grad_kept(model):
        model.set_adapter(name)
        try:
            yield model
        finally:
            model.set_adapter(previous)


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """A peft model run as its base model (every adapter off): a LoRA policy's πref. Afterwards
    every parameter's ``requires_grad`` is as before."""
    with _requires_grad_kept(model), model.disable_adapter():
        yield model


def train_only_adapters(model: nn.Module, names: list[str]) -> None:
    """LoRA weights of the adapters ``names`` trainable, those of any other adapter frozen."""
    for param_name, p in model.named_parameters():
        if "lora_" in param_name:
            p.requires_grad_(any(f".{n}." in param_name for n in names))
