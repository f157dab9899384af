"""What an export needs so that other tools read it as the stages did.

Two things the stages do that plain transformers would not know from the weights alone:

* prompts of chat data were rendered with the fallback template when the tokenizer had none
  (``data/text.py``): the exported tokenizer carries it, so the next stage, vLLM or a user
  formats prompts the same way;
* a scalar model (reward model, critic) is read at each sequence's last real token, its EOS;
  ``AutoModelForSequenceClassification`` reads the last token that is not ``pad_token_id``, which
  is the token *before* EOS when pad == EOS (GPT-2, Llama-3 base and others). Such a model is
  exported with a pad token of its own, the embedding grown by one row where the vocabulary has
  no room, so plain transformers reads the EOS too.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lightning_rlhf.data.text import PLAIN_CHAT_TEMPLATE

EXPORT_PAD_TOKEN = "<|pad|>"


def with_chat_template(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy carrying the fallback chat template when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def is_scalar_model(model: nn.Module) -> bool:
    """Whether ``model`` (a peft wrapper's base, if any) has a sequence-classification head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


def with_distinct_pad(model: nn.Module, tokenizer: Any, copied: bool) -> tuple[nn.Module, Any]:
    """A scalar model and tokenizer whose pad token is not EOS (unchanged when it is not).

    The pad token is ``EXPORT_PAD_TOKEN`` (or the tokenizer's own id for it, if it has one); the
    input embedding gains a row when the new id is past its end (the new row's value never
    reaches a score: pads are masked, and come after the token read). ``config.pad_token_id``
    names it. ``model`` is copied first unless ``copied`` (it is already a copy), so the module
    being trained is left as it was.
    """
    if not is_scalar_model(model) or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return model, tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"pad_token": EXPORT_PAD_TOKEN})
    model = model if copied else copy.deepcopy(model)
    if tokenizer.pad_token_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
