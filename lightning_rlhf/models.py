"""One loader for every stage, and the options it loads with.

``model_name_or_path`` is a hub name or a local directory; both go through ``from_pretrained``.
Causal LMs (policy, SFT, reference) and scalar-head models (reward, critic) share the same options.
The exporter (``hf_export.py``), the LoRA helpers (``lora.py``) and the readers of a model's
outputs (``model_outputs.py``) can be imported from here too, as code written against this module
names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_rlhf.hf_export import export_hf
from lightning_rlhf.lora import (
    adapter_active,
    adapters_off,
    apply_lora,
    lora_config,
    train_only_adapters,
)
from lightning_rlhf.model_files import (
    check_extra,
    check_model_dir,
    check_path,
    has_safetensors,
    unreadable,
)
from lightning_rlhf.model_outputs import (
    last_token_index,
    padded_positions,
    sequence_scores,
    token_scalars,
)

__all__ = [
    "DType",
    "LoraOptions",
    "ModelOptions",
    "adapter_active",
    "adapters_off",
    "check_same_tokenizer",
    "export_hf",
    "last_token_index",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "lora_config",
    "padded_positions",
    "sequence_scores",
    "token_scalars",
    "train_only_adapters",
]

DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters (peft). The reference policy of a LoRA policy is the same model, adapters off.

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt; "all-linear" adapts every linear layer but the head.
        merge_on_export: merge adapters into the base weights on export (an ordinary model
            directory); False saves the adapter alone, loadable with peft.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    merge_on_export: bool = True

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelOptions:
    """How a model is loaded; shared by every stage.

    Attributes:
        dtype: weight dtype at load ("auto" keeps the checkpoint's). Use bf16 mixed precision
            through ``trainer.precision`` rather than bf16 weights for full fine-tuning.
        attn_implementation: "sdpa", "eager", "flash_attention_2", ... or None for the default.
        gradient_checkpointing: recompute activations in backward to save memory.
        trust_remote_code: run modelling code shipped with a hub checkpoint. Off: only turn it on
            for a checkpoint whose code you have read.
        lora: LoRA adapters; None trains all weights.
    """

    dtype: DType = "auto"
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoraOptions | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_same_tokenizer(policy: str, other: str, role: str, trust_remote_code: bool = False):
    """Refuse a model that reads the policy's token ids but was trained with another tokenizer.

    The reference policy and the critic read the policy's ids directly; a reward function sees
    text and re-tokenises it, so a reward model may use any tokenizer.
    """
    if Path(policy).expanduser().resolve() == Path(other).expanduser().resolve():
        return
    a, b = load_tokenizer(policy, trust_remote_code), load_tokenizer(other, trust_remote_code)
    va, vb = a.get_vocab(), b.get_vocab()
    # a reward-model export may add a pad token of its own (portable.py): the policy's ids, its
    # pad (masked) included, still mean the same
    own_pad = b.pad_token if b.pad_token_id != a.pad_token_id and b.pad_token not in va else None
    differ = sum(vb.get(t) != i for t, i in va.items()) + len(vb.keys() - va.keys() - {own_pad})
    if (
        differ
        or a.eos_token_id != b.eos_token_id
        or (a.pad_token_id != b.pad_token_id and not own_pad)
    ):
        raise ValueError(
            f"{role} '{other}' has another tokenizer than the policy '{policy}' ({differ} of "
            f"{len(va)} token ids differ; EOS/pad ids {b.eos_token_id}/{b.pad_token_id} vs "
            f"{a.eos_token_id}/{a.pad_token_id}). It reads the policy's token ids, so it must "
            "share the policy's tokenizer"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """The tokenizer saved beside a model, with a pad token guaranteed (EOS when it has none)."""
    from transformers import AutoTokenizer

    directory = check_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise FileNotFoundError(unreadable(name_or_path, err)) from err
    except ValueError as err:  # a directory without tokenizer files: the library's guesswork
        if directory is None:
            raise
        files = ("tokenizer_config.json", "tokenizer.json")
        reason = (
            err
            if any((directory / f).is_file() for f in files)
            else FileNotFoundError("no tokenizer files (tokenizer_config.json, tokenizer.json)")
        )
        raise FileNotFoundError(unreadable(name_or_path, reason)) from None
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer of '{name_or_path}' has no EOS token; set one (tokenizer.eos_token) "
            "so responses can end"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # the attention mask, not the id, marks padding
    tok.padding_side = padding_side
    return tok


def _from_pretrained(auto_cls, name_or_path: str, options: ModelOptions, **kwargs):
    directory = check_path(name_or_path)
    if directory is not None:
        check_model_dir(directory)
    check_extra(options.extra)
    kwargs = {**options.extra, **kwargs}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    dtype = options.dtype if options.dtype == "auto" else getattr(torch, options.dtype)
    try:
        model, info = auto_cls.from_pretrained(
            name_or_path,
            dtype=dtype,
            trust_remote_code=options.trust_remote_code,
            use_safetensors=has_safetensors(name_or_path),
            output_loading_info=True,
            **kwargs,
        )
    except OSError as err:
        raise FileNotFoundError(unreadable(name_or_path, err)) from err
    except TypeError as err:  # an ``extra`` key neither from_pretrained nor the model takes
        unknown = [k for k in options.extra if f"'{k}'" in str(err)]
        if not unknown:
            raise
        raise ValueError(
            f"model.model.extra: {unknown[0]!r} is not an argument of from_pretrained nor of "
            f"the model of '{name_or_path}' ({err}); remove it or correct its name"
        ) from None
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        kind = "causal LM" if "CausalLM" in auto_cls.__name__ else "scalar-head model"
        raise ValueError(
            f"'{name_or_path}' is a model of another kind ({_architectures(name_or_path)}) that "
            f"cannot be loaded as a {kind}, which this stage needs"
        ) from None
    nonfinite = [n for n, p in model.named_parameters() if not p.is_meta and _nonfinite(p)]
    if nonfinite:  # caught here, not as a sampling error deep inside generate()
        raise ValueError(
            f"'{name_or_path}' holds non-finite weights (NaN or Inf) in {len(nonfinite)} tensors "
            f"({', '.join(nonfinite[:3])}): the checkpoint is corrupt; export it again from a good "
            "checkpoint"
        )
    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, sorted(info.get("missing_keys", []))


def _nonfinite(t: torch.Tensor) -> bool:
    """Any NaN or Inf in ``t``: one reading pass (a float32 sum is finite when every value is),
    the element-wise test only where the sum is not (NaN/Inf, or finite values that overflow)."""
    return not torch.isfinite(t.sum(dtype=torch.float32)) and not torch.isfinite(t).all()


def _architectures(name_or_path: str) -> str:
    """The architectures a model directory's config.json names, for messages."""
    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        return "architecture unknown"
    saved = json.loads(config.read_text())
    return ", ".join(saved.get("architectures") or [saved.get("model_type", "unknown")])


def _saved_as_scalar_model(model: nn.Module) -> bool:
    """Whether the checkpoint was saved with a sequence-classification (reward or value) head."""
    saved = getattr(model.config, "architectures", None) or []
    return bool(saved) and all(a.endswith("ForSequenceClassification") for a in saved)


def load_causal_lm(name_or_path: str, options: ModelOptions | None = None) -> nn.Module:
    """A causal LM (policy, SFT model, reference), LoRA-wrapped when ``options.lora`` is set."""
    from transformers import AutoModelForCausalLM

    options = options or ModelOptions()
    model, missing = _from_pretrained(AutoModelForCausalLM, name_or_path, options)
    if missing:
        raise ValueError(
            f"'{name_or_path}' ({_architectures(name_or_path)}) lacks {len(missing)} weights a "
            f"causal LM needs ({', '.join(missing[:3])}, ...): they would start random. This "
            "stage needs a causal LM: a base model or an SFT export"
        )
    if _saved_as_scalar_model(model):
        raise ValueError(
            f"'{name_or_path}' is a reward/value model ({_architectures(name_or_path)}): its "
            "language-model head is not trained. This stage needs a causal LM: a base model or "
            "an SFT export"
        )
    if options.lora is not None:
        model = apply_lora(model, options.lora, "CAUSAL_LM")
    return model


def load_scalar_model(
    name_or_path: str,
    options: ModelOptions | None = None,
    pad_token_id: int | None = None,
    trained_head: bool = False,
) -> nn.Module:
    """The LM with a scalar head (reward model, critic): ``AutoModelForSequenceClassification``.

    A causal LM gets a new, random head (what training a reward model or a critic starts from);
    ``trained_head=True`` refuses one, for a reward model that scores without training.
    """
    from transformers import AutoModelForSequenceClassification

    options = options or ModelOptions()
    model, _ = _from_pretrained(  # the head is new unless the checkpoint has one
        AutoModelForSequenceClassification, name_or_path, options, num_labels=1
    )
    if trained_head and not _saved_as_scalar_model(model):
        raise ValueError(
            f"'{name_or_path}' has no trained reward head ({_architectures(name_or_path)}): its "
            "scores would be random. Point the reward at a reward-stage export (configs/reward.yaml)"
        )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # HF reads the score at the last non-pad token
    if options.lora is not None:
        model = apply_lora(model, options.lora, "SEQ_CLS", modules_to_save=["score"])
    return model
