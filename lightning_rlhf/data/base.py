"""What the data modules share: the tokenizer, the train/validation split, encoding once, and a
training loader that resumes mid-epoch from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


class TextDataModule(LightningDataModule):
    """Base of the data modules: loads splits in ``setup`` and encodes them with ``_encode``.

    Subclasses store their ``__init__`` arguments with ``save_hyperparameters()`` and must have
    ``tokenizer``, ``train_path``, ``val_path``, ``train_split``, ``val_split``, ``subset``,
    ``val_fraction``, ``batch_size``, ``seed`` and ``trust_remote_code`` among them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []

    def _encode(self, ds, source: str) -> list[dict]:
        raise NotImplementedError

    def resumable_loader(
        self, data: list[dict], collate_fn: Callable, drop_last: bool = False
    ) -> ResumableLoader:
        """The training loader of every stage: shuffled by ``seed``, resumable mid-epoch."""
        hp = self.hparams
        return ResumableLoader(
            data,
            hp.batch_size,
            hp.seed,
            collate_fn,
            drop_last=drop_last,
            num_workers=hp.get("num_workers", 0),
        )

    def collate(self, fn: Callable) -> Callable:
        """``fn``, a collate of ``data/collate.py``, with this module's pad id and padding multiple."""
        return partial(
            fn,
            pad_token_id=self.tokenizer.pad_token_id,
            pad_to_multiple_of=self.hparams.get("pad_to_multiple_of", 1),
        )

    def _check_options(self) -> None:
        """Options every data module has, checked before any file is read."""
        hp = self.hparams
        if hp.batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {hp.batch_size}")
        if not 0.0 <= hp.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {hp.val_fraction}")
        if hp.get("num_workers", 0) < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {hp.num_workers}")
        if hp.get("pad_to_multiple_of", 1) < 1:
            raise ValueError(
                f"data.pad_to_multiple_of must be at least 1, got {hp.pad_to_multiple_of}"
            )

    def setup(self, stage: str | None = None) -> None:
        from lightning_rlhf.models import load_tokenizer

        hp = self.hparams
        self._check_options()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer, hp.trust_remote_code)
        need_train = stage in (None, "fit") and not self.train_set
        need_val = not self.val_set and (hp.val_path is not None or hp.val_fraction > 0)
        if not (need_train or need_val):
            return
        if hp.val_path is None and hp.val_fraction == 0:
            train, val, val_source = load_split(hp.train_path, hp.train_split, hp.subset), None, ""
        elif (
            hp.val_path is None
        ):  # hold out a fraction of the training rows, the same one each time
            rows = load_split(hp.train_path, hp.train_split, hp.subset)
            try:
                parts = rows.train_test_split(test_size=hp.val_fraction, seed=hp.seed)
            except ValueError as err:  # too few rows to hold any out
                raise ValueError(
                    f"{hp.train_path}: cannot hold out data.val_fraction={hp.val_fraction:g} of "
                    f"{len(rows)} rows ({err}); give data.val_path or more rows"
                ) from None
            train, val = parts["train"], parts["test"]
            val_source = f"{hp.train_path} [held-out {hp.val_fraction:g}]"
        else:
            train = load_split(hp.train_path, hp.train_split, hp.subset) if need_train else None
            val = load_split(hp.val_path, hp.val_split, hp.subset) if need_val else None
            val_source = f"{hp.val_path} [{hp.val_split}]"
        if need_train:
            self.train_set = self._encode_named(train, f"{hp.train_path} [{hp.train_split}]")
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
