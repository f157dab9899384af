"""PromptDataModule: prompts for the RL stage, served by a loader that resumes where it stopped."""

from __future__ import annotations

import logging
from typing import Any, Literal

from torch.utils.data import DataLoader

from lightning_rlhf.data.base import ResumableLoader, ResumableSampler, TextDataModule
from lightning_rlhf.data.collate import collate_prompts
from lightning_rlhf.data.load import require_columns
from lightning_rlhf.data.text import (
    check_messages,
    encode_prompt,
    render_chat,
    without_final_answers,
)

log = logging.getLogger(__name__)

__all__ = ["PromptDataModule", "ResumableLoader", "ResumableSampler"]


class PromptDataModule(TextDataModule):
    """Prompts for the RL stage: a ``prompt`` column of text, or ``messages`` rendered with the chat
    template and its generation prompt. The train loader resumes mid-epoch from a checkpoint.

    Args:
        train_path: the training prompts (a file, directory or hub dataset).
        val_path: held-out prompts, scored at validation; None holds out ``val_fraction``.
        tokenizer: the policy's model directory or hub name.
        prompt_column: column holding the prompt text.
        messages_column: column holding a conversation to continue (used when present); its
            trailing assistant turns, if any, are left out (they would answer the prompt), and
            counted in the log.
        prompt_until: keep each prompt up to and including the last occurrence of this marker,
            e.g. "\\n\\nAssistant:" to take HH-RLHF's dialogues without their final answer; rows
            without the marker are dropped and counted. None keeps the whole text.
        max_prompt_length: longest prompt in tokens; longer prompts lose their left side
            (``truncation="left"``; the prompt text the reward sees is then the kept tokens,
            decoded) or are dropped and counted (``"drop"``).
        truncation: policy for prompts longer than ``max_prompt_length``.
        num_val_prompts: held-out prompts scored at each validation.
        **kwargs: the options every data module has (:class:`TextDataModule`): ``train_split``,
            ``val_split``, ``subset``, ``val_fraction``, ``batch_size`` (prompts per rollout),
            ``pad_to_multiple_of``, ``num_workers``, ``seed``, ``trust_remote_code``.
    """

    def __init__(
        self,
        train_path: str = "artifacts/task/prompts_train.jsonl",
        val_path: str | None = "artifacts/task/prompts_val.jsonl",
        tokenizer: str = "artifacts/sft",
        prompt_column: str = "prompt",
        messages_column: str = "messages",
        prompt_until: str | None = None,
        max_prompt_length: int = 64,
        truncation: Literal["left", "drop"] = "left",
        num_val_prompts: int = 500,
        **kwargs: Any,
    ) -> None:
        if max_prompt_length < 1:
            raise ValueError(f"data.max_prompt_length must be at least 1, got {max_prompt_length}")
        super().__init__(train_path, val_path, tokenizer, **kwargs)

    def _prompt_text(self, row: dict) -> tuple[object, bool, bool]:
        """(prompt, templated, whether trailing assistant turns were left out) of one row, cut
        at ``prompt_until``; the prompt is None (or not text) when the row has none."""
        hp = self.hparams
        messages, templated, stripped = row.get(hp.messages_column), False, False
        if messages:  # an empty conversation: the prompt column, if any
            check_messages(messages)
            asked = without_final_answers(messages)
            templated, stripped = bool(asked), len(asked) < len(messages)
            prompt = (
                render_chat(self.tokenizer, asked, add_generation_prompt=True) if asked else None
            )
        else:
            prompt = row.get(hp.prompt_column)  # None: the row has neither
        if hp.prompt_until and isinstance(prompt, str):
            cut_at = prompt.rfind(hp.prompt_until)
            prompt = prompt[: cut_at + len(hp.prompt_until)] if cut_at >= 0 else ""
        return prompt, templated, stripped

    def _encode(self, ds, source: str) -> list[dict]:
        hp = self.hparams
        chat = hp.messages_column in ds.column_names
        if not chat:
            require_columns(ds, [hp.prompt_column], source)
        out, dropped, cut, answered = [], 0, 0, 0
        for i, row in enumerate(ds):
            try:
                prompt, templated, stripped = self._prompt_text(row)
                answered += stripped
            except ValueError as err:
                raise ValueError(
                    f"{source} row {i}: {err} (column '{hp.messages_column}')"
                ) from None
            if not isinstance(prompt, str) or not prompt.strip():
                dropped += 1
                continue
            try:
                ids = encode_prompt(self.tokenizer, prompt, templated=templated)
            except ValueError as err:
                raise ValueError(f"{source} row {i}: {err}") from None
            if len(ids) > hp.max_prompt_length:
                if hp.truncation == "drop":
                    dropped += 1
                    continue
                ids, cut = ids[-hp.max_prompt_length :], cut + 1
                # the reward (and the logs) must see the prompt the policy sees, not the full text
                prompt = self.tokenizer.decode(ids, skip_special_tokens=not templated)
            out.append({"prompt_ids": ids, "prompt": prompt})
        if answered:
            log.warning(
                "%s: %d conversations ended with assistant turns: those were left out of the "
                "prompts (the policy answers the last non-assistant turn)",
                source,
                answered,
            )
        if dropped or cut:
            log.warning(
                "%s: %d prompts dropped (empty, not text, or too long), %d truncated",
                source,
                dropped,
                cut,
            )
        # only the train loader batches by batch_size (drop_last); the val split's name can match
        batch_size = self.loader.batch_size
        if len(out) < batch_size and source == self.source.train_name:
            raise ValueError(
                f"{source}: {len(out)} usable prompts, fewer than one batch ({batch_size})"
            )
        if not out:
            raise ValueError(f"{source}: no usable prompts among {len(ds)} rows")
        return out

    def train_dataloader(self) -> DataLoader:
        collate = self.collate(collate_prompts)
        return self.resumable_loader(self.train_set, collate, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        collate = self.collate(collate_prompts)
        return DataLoader(
            self.val_set[: self.hparams.num_val_prompts], batch_size=256, collate_fn=collate
        )
