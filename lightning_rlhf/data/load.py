"""One loader for every stage's data: a hub dataset name, a local directory, or local files.

Everything goes through ``datasets`` so a hub dataset and the bundled JSONL take the same path.
Errors name the file, line, split or column.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _check_jsonl(path: Path) -> int:
    """Report a malformed line by file and line number before ``datasets`` hides it in a traceback.

    Returns the number of rows."""
    rows = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON line: {err.msg}") from None
            rows += 1
    return rows


def load_split(path: str, split: str = "train", subset: str | None = None) -> datasets.Dataset:
    """Load one split.

    Args:
        path: a local file (.json, .jsonl, .parquet, .csv), a local directory (files readable by
            ``datasets`` or a ``save_to_disk`` folder), or a hub dataset name such as
            ``Anthropic/hh-rlhf``.
        split: the split to read (a local file has only "train", which is what it holds).
        subset: the hub dataset's configuration name, if it has several.
    """
    local = Path(path).expanduser()
    if local.is_file():
        builder = _BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unsupported file type; use one of {sorted(_BUILDERS)}")
        empty = local.stat().st_size == 0
        if local.suffix.lower() == ".jsonl":
            empty = _check_jsonl(local) == 0
        if empty:
            raise ValueError(f"dataset file '{path}' is empty")
        ds = datasets.load_dataset(builder, data_files=str(local), split="train")
    elif local.is_dir():
        if (local / "dataset_info.json").exists() or (local / "state.json").exists():
            ds = datasets.load_from_disk(str(local))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(str(local), subset, split=split)
    elif path.startswith((".", "/", "~")) or Path(path).suffix.lower() in _BUILDERS:
        raise FileNotFoundError(
            f"data file '{path}' does not exist. For the bundled task run "
            "`python -m lightning_rlhf make-data artifacts/task`."
        )
    else:
        try:
            ds = datasets.load_dataset(path, subset, split=split)
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise FileNotFoundError(
                f"dataset '{path}' (split '{split}') is neither a local path nor a loadable hub "
                f"dataset: {err}"
            ) from err
    if len(ds) == 0:
        raise ValueError(f"dataset '{path}' split '{split}' is empty")
    return ds


def require_columns(ds: datasets.Dataset, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; the columns are {ds.column_names}. "
            "Set the data module's *_column options to the names your data uses."
        )
