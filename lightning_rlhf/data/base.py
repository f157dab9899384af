"""What the data modules share: the tokenizer, the train/validation split, encoding once."""

from __future__ import annotations

from typing import Any

from lightning import LightningDataModule

from lightning_rlhf.data.load import load_split


class TextDataModule(LightningDataModule):
    """Base of the data modules: loads splits in ``setup`` and encodes them with ``_encode``.

    Subclasses store their ``__init__`` arguments with ``save_hyperparameters()`` and must have
    ``tokenizer``, ``train_path``, ``val_path``, ``train_split``, ``val_split``, ``subset``,
    ``val_fraction``, ``seed`` and ``trust_remote_code`` among them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []

    def _encode(self, ds, source: str) -> list[dict]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        from lightning_rlhf.models import load_tokenizer

        hp = self.hparams
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
            parts = load_split(hp.train_path, hp.train_split, hp.subset).train_test_split(
                test_size=hp.val_fraction, seed=hp.seed
            )
            train, val = parts["train"], parts["test"]
            val_source = f"{hp.train_path} [held-out {hp.val_fraction:g}]"
        else:
            train = load_split(hp.train_path, hp.train_split, hp.subset) if need_train else None
            val = load_split(hp.val_path, hp.val_split, hp.subset) if need_val else None
            val_source = f"{hp.val_path} [{hp.val_split}]"
        if need_train:
            self.train_set = self._encode(train, f"{hp.train_path} [{hp.train_split}]")
        if need_val:
            self.val_set = self._encode(val, val_source)
