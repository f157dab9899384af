"""The exporter of every stage: a trained model and its tokenizer as an ordinary Hugging Face
directory, written atomically, that the next stage (or plain transformers) loads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from lightning_rlhf.io import atomic_dir


def export_hf(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    merge_lora: bool = True,
    extra_json: dict[str, dict] | None = None,
    about: dict | None = None,
) -> Path:
    """Save ``model`` + ``tokenizer`` as a Hugging Face directory, atomically.

    A LoRA model is merged into its base (``merge_lora``) or saved as an adapter. ``extra_json``
    writes further files (e.g. reward statistics) beside the weights. Weights are safetensors.
    So that plain transformers reads the export as the stages did (``portable.py``), the
    tokenizer carries the chat template prompts were rendered with, and a scalar model whose
    pad token is its EOS gets a pad token of its own (not for an adapter, saved without its base).
    ``out_dir`` must be absent, empty or an earlier export (``export_target``); the export's
    marker file records ``about`` (e.g. the stage and its step).
    """
    import copy

    from peft import PeftModel

    from lightning_rlhf.export_target import check_export_target, write_marker
    from lightning_rlhf.portable import with_chat_template, with_distinct_pad

    copied = False
    if isinstance(model, PeftModel) and merge_lora:
        model, copied = copy.deepcopy(model).merge_and_unload(), True
    tokenizer = with_chat_template(tokenizer)
    if not isinstance(model, PeftModel):
        model, tokenizer = with_distinct_pad(model, tokenizer, copied)
    # a PeftModel holding further adapters (PPO's critic) exports its active one: the policy's
    selected = {"selected_adapters": [model.active_adapter]} if isinstance(model, PeftModel) else {}
    with atomic_dir(out_dir, guard=check_export_target) as tmp:
        _save_weights(model, tmp, selected)
        tokenizer.save_pretrained(tmp)
        for name, payload in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=2) + "\n")
        write_marker(tmp, about or {})
    return Path(out_dir)


def _save_weights(model: nn.Module, directory: Path, kwargs: dict) -> None:
    """``save_pretrained`` with safetensors; its I/O errors (a full disk) as the ``OSError`` they
    are, so that the export's message names the target (safetensors raises its own type)."""
    import re

    from safetensors import SafetensorError

    try:
        model.save_pretrained(directory, safe_serialization=True, **kwargs)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)|code: (\d+)", str(err))  # "File too large (os error 27)"
        if code is None:
            raise
        number = int(code[1] or code[2])
        raise OSError(number, os.strerror(number)) from err
