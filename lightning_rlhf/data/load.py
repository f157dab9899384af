"""One loader for every stage's data: a hub dataset name, a local directory, or local files.

Everything becomes a ``datasets.Dataset`` so a hub dataset and the bundled JSONL take the same
path. A JSON-lines file is parsed here, row by row, into an in-memory Dataset (no cache written);
errors name the file, line, split or column.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _kind(value: object) -> str | None:
    """The JSON kind of a value, for the type check of a column (None fits any column)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "text", list: "a list", dict: "an object"}[type(value)]


def _parse_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file. A malformed line, a row that is not an object, or a column
    whose kind changes from one row to another is reported by file, line and column before
    ``datasets`` or Arrow could hide it in a traceback."""
    rows: list[dict] = []
    first: dict[str, tuple[str, int]] = {}  # column -> (kind, line it was first seen on)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON line: {err.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: a row must be a JSON object, got {_kind(row) or 'null'}"
                )
            for column, value in row.items():
                kind = _kind(value)
                if kind is None:
                    continue
                seen_kind, seen_line = first.setdefault(column, (kind, lineno))
                if kind != seen_kind:
                    raise ValueError(
                        f"{path}:{lineno}: column '{column}' holds {kind} where line {seen_line} "
                        f"holds {seen_kind}"
                    )
            rows.append(row)
    return rows


def _jsonl_dataset(path: Path) -> datasets.Dataset:
    """A JSON-lines file as an in-memory Dataset (columns: every key of any row)."""
    rows = _parse_jsonl(path)
    if not rows:
        raise ValueError(f"dataset file '{path}' is empty")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        raise ValueError(f"{path}: its {len(rows)} rows have no fields (every row is {{}})")
    try:
        return datasets.Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns})
    except UnicodeEncodeError as err:  # a "\\ud800" escape: valid JSON, not valid text
        raise ValueError(f"{path}: a text holds a lone surrogate escape: {err.reason}") from None
    except (ValueError, TypeError, pyarrow.ArrowException) as err:  # a nested field's kind
        raise ValueError(f"{path}: rows disagree on the type of a nested field: {err}") from None


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


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
        if local.stat().st_size == 0:
            raise ValueError(f"dataset file '{path}' is empty")
        if local.suffix.lower() == ".jsonl":
            ds = _jsonl_dataset(local)
        else:
            try:
                ds = datasets.load_dataset(builder, data_files=str(local), split="train")
            except Exception as err:  # datasets and Arrow bury the reason several causes deep
                raise ValueError(
                    f"{path}: could not be read as {builder}: {_root_cause(err)}"
                ) from err
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
