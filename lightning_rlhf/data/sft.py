"""SFTDataModule: prompt -> demonstration data, loss on completion tokens only."""

from __future__ import annotations

import logging
from typing import Any, Literal

from torch.utils.data import DataLoader

from lightning_rlhf.data.base import TextDataModule
from lightning_rlhf.data.collate import best_fit_decreasing, collate_lm, collate_prompts
from lightning_rlhf.data.load import require_columns
from lightning_rlhf.data.text import (
    encode_completion,
    encode_prompt,
    fit_to_length,
    split_conversation,
)

log = logging.getLogger(__name__)


def row_to_text(
    row: dict, prompt_column: str, completion_column: str, messages_column: str, tokenizer
):
    """(prompt, completion, templated) of one row, conversational or prompt/completion.

    A row without a conversation falls back to its prompt/completion columns (None if absent)."""
    if row.get(messages_column) is not None:
        prompt, completion = split_conversation(row[messages_column], tokenizer)
        return prompt, completion, True
    return row.get(prompt_column), row.get(completion_column), False


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Examples concatenated into rows of at most ``max_length`` tokens, best-fit decreasing (rows
    nearly full: fewer rows, less padding than packing greedily in data order).

    ``position_ids`` restart at 0 for each example: transformers reads them to keep attention
    within each example (no cross-contamination) when the batch carries no attention mask padding.
    """
    rows = best_fit_decreasing([len(e["input_ids"]) for e in examples], max_length)
    packed = []
    for row in rows:
        members = [examples[i] for i in row]
        packed.append(
            {
                "input_ids": [t for e in members for t in e["input_ids"]],
                "labels": [t for e in members for t in e["labels"]],
                "position_ids": [t for e in members for t in range(len(e["input_ids"]))],
            }
        )
    return packed


class SFTDataModule(TextDataModule):
    """Supervised fine-tuning data: a prompt and the demonstration that should follow it.

    Args:
        train_path: the training rows (a file, directory or hub dataset).
        val_path: the validation rows; None holds out ``val_fraction`` of the training rows.
        tokenizer: the model directory or hub name whose tokenizer is used.
        prompt_column: column holding the prompt text.
        completion_column: column holding the demonstration.
        messages_column: column holding a conversation ([{"role", "content"}, ...]); when present
            it is rendered with the tokenizer's chat template and the last assistant turn is learned.
        max_length: longest tokenised example; longer ones lose the left of their prompt
            (``truncation="left"``) or are dropped and counted (``"drop"``).
        truncation: policy for examples longer than ``max_length``.
        completion_only_loss: learn only the completion tokens (False: the prompt too).
        packing: concatenate examples into full rows of ``max_length`` (no padding); before
            the first packed step the model is probed, and one whose attention ignores
            ``position_ids`` (OPT, GPT-2) is refused, naming its type.
        num_val_prompts: validation prompts the module generates for (oracle score, samples).
        **kwargs: the options every data module has (:class:`TextDataModule`): ``train_split``,
            ``val_split``, ``subset``, ``val_fraction``, ``batch_size``, ``pad_to_multiple_of``,
            ``num_workers``, ``seed``, ``trust_remote_code``.
    """

    def __init__(
        self,
        train_path: str = "artifacts/task/sft_train.jsonl",
        val_path: str | None = "artifacts/task/sft_val.jsonl",
        tokenizer: str = "artifacts/tiny-base",
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        messages_column: str = "messages",
        max_length: int = 128,
        truncation: Literal["left", "drop"] = "left",
        completion_only_loss: bool = True,
        packing: bool = False,
        num_val_prompts: int = 300,
        **kwargs: Any,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"data.max_length must be at least 2, got {max_length}")
        super().__init__(train_path, val_path, tokenizer, **kwargs)

    def _encode(self, ds, source: str) -> list[dict]:
        hp = self.hparams
        if hp.messages_column not in ds.column_names:
            require_columns(ds, [hp.prompt_column, hp.completion_column], source)
        out, dropped, cut = [], 0, 0
        for i, row in enumerate(ds):
            try:
                prompt, completion, templated = row_to_text(
                    row, hp.prompt_column, hp.completion_column, hp.messages_column, self.tokenizer
                )
            except ValueError as err:
                raise ValueError(
                    f"{source} row {i}: {err} (column '{hp.messages_column}')"
                ) from None
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
                dropped += 1
                continue
            try:
                p_ids = encode_prompt(self.tokenizer, prompt, templated)
                c_ids = encode_completion(self.tokenizer, completion)
            except ValueError as err:
                raise ValueError(f"{source} row {i}: {err}") from None
            too_long = len(p_ids) + len(c_ids) > hp.max_length
            fitted = (
                None
                if too_long and hp.truncation == "drop"
                else fit_to_length(p_ids, c_ids, hp.max_length)
            )
            if fitted is None:
                dropped += 1
                continue
            cut += too_long
            p_ids, c_ids = fitted
            prompt_labels = p_ids if not hp.completion_only_loss else [-100] * len(p_ids)
            out.append(
                {
                    "input_ids": p_ids + c_ids,
                    "labels": prompt_labels + c_ids,
                    "prompt_ids": p_ids,
                    "prompt": prompt,
                }
            )
        if dropped or cut:
            log.warning(
                "%s: %d rows dropped (empty, not text, or too long), %d truncated",
                source,
                dropped,
                cut,
            )
        if not out:
            raise ValueError(
                f"{source}: no usable rows (all {len(ds)} empty or longer than max_length)"
            )
        return out

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        data = pack(self.train_set, hp.max_length) if hp.packing else self.train_set
        return self.resumable_loader(data, self.collate(collate_lm))

    def val_dataloader(self) -> list[DataLoader]:
        """Two loaders: 0 for loss and token metrics, 1 for generation from held-out prompts."""
        if not self.val_set:
            return []
        batch_size = self.loader.batch_size
        return [
            DataLoader(
                self.val_set,
                batch_size=batch_size,
                collate_fn=self.collate(collate_lm),
            ),
            DataLoader(
                self.val_set[: self.hparams.num_val_prompts],
                batch_size=max(batch_size, 128),
                collate_fn=self.collate(collate_prompts),
            ),
        ]
