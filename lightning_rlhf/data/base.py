"""What the data modules share: the tokenizer, the train/validation split, encoding once, and a
training loader that resumes mid-epoch from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lightning_rlhf.data.load import load_split


class ResumableSampler(DistributedSampler):
    """A seeded shuffle per epoch, sharded over ranks, that can start part-way through an epoch.

    Each rank takes every ``world_size``-th index of the same permutation; the permutation's last
    ``n % world_size`` indices are left out so every rank has as many batches. ``start`` counts
    indices of this rank's shard. It is a ``DistributedSampler`` only so that Lightning, seeing
    one, leaves it in place instead of wrapping it (it shards itself).

    Starting a pass moves the sampler to the next epoch at once: Lightning stops after
    ``len(loader)`` batches without asking for more, so the end of a pass is never seen. The length
    is the whole epoch's even when resuming part-way: Lightning counts a resumed epoch's batches
    from its start.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it needs a process group
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler counts its own passes, restored from the checkpoint."""

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
    checkpoint, so a resumed run neither repeats nor skips examples.

    Lightning does not prefetch from a loader with a length (it knows where the epoch ends), so
    every batch handed out has been trained on when a checkpoint is written. ``prefetched`` is for
    a consumer that holds batches ahead of the one it trains on: those are not counted as consumed.
    The loader's own generator keeps it from drawing from the global RNG at each ``iter``, which
    would make a resumed run's sampling differ from an uninterrupted one. ``drop_last=False`` keeps
    an epoch's last, smaller batch.
    """

    def __init__(
        self,
        data: list[dict],
        batch_size: int,
        seed: int,
        collate_fn: Callable,
        prefetched: int = 0,
        drop_last: bool = True,
        num_workers: int = 0,
    ):
        self.resumable = ResumableSampler(len(data), seed)
        super().__init__(
            data,
            batch_size=batch_size,
            sampler=self.resumable,
            collate_fn=collate_fn,
            drop_last=drop_last,
            num_workers=num_workers,
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
        left = len(self.resumable._shard()) - start  # examples of this epoch not yet served
        if self._exhausted or left <= 0 or (self.drop_last and left < self.batch_size):
            return {"epoch": self._epoch + 1, "start": 0}  # the epoch is used up
        return {"epoch": self._epoch, "start": start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumable.epoch, self.resumable.start = state["epoch"], state["start"]
        self._epoch, self._start, self._yielded, self._exhausted = (
            state["epoch"],
            state["start"],
            0,
            False,
        )


@dataclass(frozen=True)
class DataSource:
    """Where a data module's rows come from: its ``train_path``, ``val_path``, ``train_split``,
    ``val_split``, ``subset`` and ``val_fraction`` options (documented on
    :class:`TextDataModule`)."""

    train_path: str
    val_path: str | None
    train_split: str
    val_split: str
    subset: str | None
    val_fraction: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def train_name(self) -> str:
        """The training split as messages name it: ``path [split]``."""
        return f"{self.train_path} [{self.train_split}]"


@dataclass(frozen=True)
class LoaderOptions:
    """How rows are batched: the ``batch_size``, ``pad_to_multiple_of``, ``num_workers`` and
    ``seed`` options (documented on :class:`TextDataModule`)."""

    batch_size: int
    pad_to_multiple_of: int
    num_workers: int
    seed: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.pad_to_multiple_of < 1:
            raise ValueError(
                f"data.pad_to_multiple_of must be at least 1, got {self.pad_to_multiple_of}"
            )


class TextDataModule(LightningDataModule):
    """Base of the data modules: loads splits in ``setup`` and encodes them with ``_encode``.

    The options every data module has are declared here, once; a subclass declares its own,
    and ``train_path``, ``val_path`` and ``tokenizer``, whose defaults are its stage's files,
    and passes the rest on with ``**kwargs``: the CLI and ``--print_config`` show them all as
    flat ``data.*`` keys. They are read typed, as :attr:`source` and :attr:`loader`, and checked
    once, when the module is built. A path is a hub dataset name, a local directory, or a local
    .jsonl/.json/.parquet/.csv file; ``val_path`` None holds out ``val_fraction`` of the
    training rows; ``tokenizer`` is linked by the CLI to ``model.model_name_or_path``.

    Args:
        train_split: split of ``train_path`` to read (hub datasets and directories).
        val_split: split of ``val_path`` to read.
        subset: hub dataset configuration name.
        val_fraction: fraction of training rows held out when ``val_path`` is None.
        batch_size: rows per step and device: examples (packed rows when packing) for SFT, pairs
            (two sequences each) for preferences, prompts per rollout for RL.
        pad_to_multiple_of: pad each batch's width up to a multiple of this (1: to its longest
            row). On a GPU every new width costs attention a new kernel plan (~90 ms a step on an
            H200 with a 0.5B model, both fused attention passes): 16 or 64 keeps the widths few.
        num_workers: DataLoader workers of the training loader.
        seed: seed of the held-out split and of the shuffle.
        trust_remote_code: allow the tokenizer's own code from the hub.
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None,
        tokenizer: str,
        *,
        train_split: str = "train",
        val_split: str = "train",
        subset: str | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 64,
        pad_to_multiple_of: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.source = DataSource(train_path, val_path, train_split, val_split, subset, val_fraction)
        self.loader = LoaderOptions(batch_size, pad_to_multiple_of, num_workers, seed)
        self.tokenizer_name, self.trust_remote_code = tokenizer, trust_remote_code
        self.save_hyperparameters()  # the subclass's options too: Lightning reads every frame
        self.tokenizer: Any = None
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []

    def _encode(self, ds, source: str) -> list[dict]:
        raise NotImplementedError

    def resumable_loader(
        self, data: list[dict], collate_fn: Callable, drop_last: bool = False
    ) -> ResumableLoader:
        """The training loader of every stage: shuffled by ``seed``, resumable mid-epoch."""
        o = self.loader
        return ResumableLoader(
            data, o.batch_size, o.seed, collate_fn, drop_last=drop_last, num_workers=o.num_workers
        )

    def collate(self, fn: Callable) -> Callable:
        """``fn``, a collate of ``data/collate.py``, with this module's pad id and padding multiple."""
        return partial(
            fn,
            pad_token_id=self.tokenizer.pad_token_id,
            pad_to_multiple_of=self.loader.pad_to_multiple_of,
        )

    def setup(self, stage: str | None = None) -> None:
        from lightning_rlhf.models import load_tokenizer

        src = self.source
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name, self.trust_remote_code)
        need_train = stage in (None, "fit") and not self.train_set
        need_val = not self.val_set and (src.val_path is not None or src.val_fraction > 0)
        if not (need_train or need_val):
            return
        if src.val_path is None and src.val_fraction == 0:
            train, val, val_source = (
                load_split(src.train_path, src.train_split, src.subset),
                None,
                "",
            )
        elif (
            src.val_path is None
        ):  # hold out a fraction of the training rows, the same one each time
            rows = load_split(src.train_path, src.train_split, src.subset)
            try:
                parts = rows.train_test_split(test_size=src.val_fraction, seed=self.loader.seed)
            except ValueError as err:  # too few rows to hold any out
                raise ValueError(
                    f"{src.train_path}: cannot hold out data.val_fraction={src.val_fraction:g} of "
                    f"{len(rows)} rows ({err}); give data.val_path or more rows"
                ) from None
            train, val = parts["train"], parts["test"]
            val_source = f"{src.train_path} [held-out {src.val_fraction:g}]"
        else:
            train = load_split(src.train_path, src.train_split, src.subset) if need_train else None
            val = load_split(src.val_path, src.val_split, src.subset) if need_val else None
            val_source = f"{src.val_path} [{src.val_split}]"
        if need_train:
            self.train_set = self._encode_named(train, src.train_name)
        if need_val:
            self.val_set = self._encode_named(val, val_source)

    def _encode_named(self, ds, source: str) -> list[dict]:
        """``_encode``, with any error from a row it did not anticipate reported by file."""
        try:
            return self._encode(ds, source)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            if isinstance(err, ValueError) and source in str(err):
                raise  # the module's own check, already naming the file
            raise ValueError(
                f"{source}: a row could not be encoded ({type(err).__name__}: {err})"
            ) from err
