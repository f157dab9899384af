"""PromptDataModule: prompts for the RL stage, served by a loader that resumes where it stopped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Sampler

from lightning_rlhf.data.base import TextDataModule
from lightning_rlhf.data.collate import collate_prompts
from lightning_rlhf.data.load import require_columns
from lightning_rlhf.data.text import encode_prompt, render_chat

log = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """A seeded shuffle per epoch, sharded over ranks, that can start part-way through an epoch.

    Each rank takes every ``world_size``-th index of the same permutation (so the RL loader needs
    ``trainer.use_distributed_sampler: false``); the permutation's last ``n % world_size`` indices
    are left out so every rank has as many batches. ``start`` counts indices of this rank's shard.

    Starting a pass moves the sampler to the next epoch at once: Lightning stops after
    ``len(loader)`` batches without asking for more, so the end of a pass is never seen. The length
    is the whole epoch's even when resuming part-way: Lightning counts a resumed epoch's batches
    from its start.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def _shard(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
        else:
            order = torch.arange(self.n)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return order[: self.n - self.n % world][rank::world].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self._shard()[self.start :]
        self.epoch, self.start = self.epoch + 1, 0
        return iter(indices)

    def __len__(self) -> int:
        return len(self._shard())


class ResumableLoader(DataLoader):
    """A DataLoader with ``state_dict``/``load_state_dict``: Lightning stores its position in each
    checkpoint, so a resumed run neither repeats nor skips prompts.

    Lightning does not prefetch from a loader with a length (it knows where the epoch ends), so
    every batch handed out has been trained on when a checkpoint is written. ``prefetched`` is for
    a consumer that holds batches ahead of the one it trains on: those are not counted as consumed.
    The loader's own generator keeps it from drawing from the global RNG at each ``iter``, which
    would make a resumed run's sampling differ from an uninterrupted one.
    """

    def __init__(
        self, data: list[dict], batch_size: int, seed: int, collate_fn, prefetched: int = 0
    ):
        self.resumable = ResumableSampler(len(data), seed)
        super().__init__(
            data,
            batch_size=batch_size,
            sampler=self.resumable,
            collate_fn=collate_fn,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )
        self.prefetched = prefetched
        self._epoch, self._start, self._yielded, self._exhausted = 0, 0, 0, False

    def __iter__(self):
        self._epoch, self._start = self.resumable.epoch, self.resumable.start
        self._yielded, self._exhausted = 0, False
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._exhausted = True

    def state_dict(self) -> dict[str, Any]:
        consumed = self._yielded - (0 if self._exhausted else self.prefetched)
        start = self._start + max(consumed, 0) * self.batch_size
        if self._exhausted or start + self.batch_size > len(self.resumable._shard()):
            return {"epoch": self._epoch + 1, "start": 0}  # the epoch is used up (drop_last)
        return {"epoch": self._epoch, "start": start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumable.epoch, self.resumable.start = state["epoch"], state["start"]
        self._epoch, self._start, self._yielded, self._exhausted = (
            state["epoch"],
            state["start"],
            0,
            False,
        )


class PromptDataModule(TextDataModule):
    """Prompts for the RL stage: a ``prompt`` column of text, or ``messages`` rendered with the chat
    template and its generation prompt. The train loader resumes mid-epoch from a checkpoint.

    Args:
        train_path: hub dataset name, local directory, or local .jsonl/.json/.parquet/.csv file.
        val_path: held-out prompts, scored at validation; None holds out ``val_fraction``.
        tokenizer: the policy's model directory or hub name (linked by the CLI).
        train_split: split of ``train_path`` to read.
        val_split: split of ``val_path`` to read.
        subset: hub dataset configuration name.
        val_fraction: fraction of training rows held out when ``val_path`` is None.
        prompt_column: column holding the prompt text.
        messages_column: column holding a conversation to continue (used when present).
        prompt_until: keep each prompt up to and including the last occurrence of this marker,
            e.g. "\n\nAssistant:" to take HH-RLHF's dialogues without their final answer; rows
            without the marker are dropped and counted. None keeps the whole text.
        max_prompt_length: longest prompt in tokens; longer prompts lose their left side
            (``truncation="left"``) or are dropped and counted (``"drop"``).
        truncation: policy for prompts longer than ``max_prompt_length``.
        batch_size: prompts per rollout and device.
        num_val_prompts: held-out prompts scored at each validation.
        seed: seed of the held-out split and of the shuffle.
        trust_remote_code: allow the tokenizer's own code from the hub.
    """

    def __init__(
        self,
        train_path: str = "artifacts/task/prompts_train.jsonl",
        val_path: str | None = "artifacts/task/prompts_val.jsonl",
        tokenizer: str = "artifacts/sft",
        train_split: str = "train",
        val_split: str = "train",
        subset: str | None = None,
        val_fraction: float = 0.05,
        prompt_column: str = "prompt",
        messages_column: str = "messages",
        prompt_until: str | None = None,
        max_prompt_length: int = 64,
        truncation: Literal["left", "drop"] = "left",
        batch_size: int = 64,
        num_val_prompts: int = 500,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.save_hyperparameters()

    def _encode(self, ds, source: str) -> list[dict]:
        hp = self.hparams
        chat = hp.messages_column in ds.column_names
        if not chat:
            require_columns(ds, [hp.prompt_column], source)
        out, dropped, cut = [], 0, 0
        for row in ds:
            if chat:
                prompt = render_chat(
                    self.tokenizer, row[hp.messages_column], add_generation_prompt=True
                )
            else:
                prompt = row[hp.prompt_column]
            if hp.prompt_until and isinstance(prompt, str):
                cut_at = prompt.rfind(hp.prompt_until)
                prompt = prompt[: cut_at + len(hp.prompt_until)] if cut_at >= 0 else ""
            if not isinstance(prompt, str) or not prompt.strip():
                dropped += 1
                continue
            ids = encode_prompt(self.tokenizer, prompt, templated=chat)
            if len(ids) > hp.max_prompt_length:
                if hp.truncation == "drop":
                    dropped += 1
                    continue
                ids, cut = ids[-hp.max_prompt_length :], cut + 1
            out.append({"prompt_ids": ids, "prompt": prompt})
        if dropped or cut:
            log.warning(
                "%s: %d prompts dropped (empty or too long), %d truncated", source, dropped, cut
            )
        # only the train loader batches by batch_size (drop_last); the val split's name can match
        if len(out) < hp.batch_size and source == f"{hp.train_path} [{hp.train_split}]":
            raise ValueError(
                f"{source}: {len(out)} usable prompts, fewer than one batch ({hp.batch_size})"
            )
        if not out:
            raise ValueError(f"{source}: no usable prompts among {len(ds)} rows")
        return out

    def train_dataloader(self) -> DataLoader:
        collate = partial(collate_prompts, pad_token_id=self.tokenizer.pad_token_id)
        return ResumableLoader(self.train_set, self.hparams.batch_size, self.hparams.seed, collate)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        collate = partial(collate_prompts, pad_token_id=self.tokenizer.pad_token_id)
        return DataLoader(
            self.val_set[: self.hparams.num_val_prompts], batch_size=256, collate_fn=collate
        )
