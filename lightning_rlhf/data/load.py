"""One loader for every stage's data: a hub dataset name, a local directory, or local files.

Everything becomes a ``datasets.Dataset`` so a hub dataset and the bundled JSONL take the same
path. JSON-lines and CSV files are parsed here, row by row, into an in-memory Dataset (no cache
written); errors name the file, line, split or column.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
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


def _csv_dataset(path: Path) -> datasets.Dataset:
    """A CSV file (header row first) as an in-memory Dataset whose every cell is text, as written.

    Read with pandas (what ``datasets`` does) an answer "046" became the number 46.0 and the texts
    "NA", "null", "None" and "" became missing values, whose rows were then dropped as empty: a
    margin column is text here too, and the data modules convert it themselves."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not readable as CSV: {err}") from None
    rows = [row for row in rows if row]  # blank lines
    if not rows:
        raise ValueError(f"dataset file '{path}' is empty")
    header = rows[0]
    duplicated = [c for c, n in Counter(header).items() if n > 1]
    if duplicated or not all(header):
        raise ValueError(f"{path}:1: the header row must name every column once, got {header}")
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path}: row {lineno - 1} (after the header) has {len(row)} fields, the header "
                f"{len(header)} ({header}); quote fields that hold a comma"
            )
    if len(rows) == 1:
        raise ValueError(f"dataset file '{path}' holds a header and no rows")
    return datasets.Dataset.from_dict(
        {c: [row[i] for row in rows[1:]] for i, c in enumerate(header)}
    )


# what ``datasets`` would read in a directory; files of several kinds are refused (it reads the
# most frequent kind alone, silently, or fails several causes deep)
_DIR_KINDS = {**_BUILDERS, ".tsv": "csv", ".txt": "text", ".arrow": "arrow"}


def _check_data_dir(path: Path) -> None:
    """A directory of data files must hold one kind of them (hidden files and others ignored)."""
    kinds: dict[str, list[str]] = {}
    for f in sorted(path.rglob("*")):
        relative = f.relative_to(path)
        if f.is_file() and not any(part.startswith(".") for part in relative.parts):
            kind = _DIR_KINDS.get(f.suffix.lower())
            if kind is not None:
                kinds.setdefault(kind, []).append(str(relative))
    if not kinds:
        raise ValueError(
            f"{path}: a directory holding no data file (.jsonl, .json, .csv, .parquet); point the "
            "data path at a file, or at a directory of files of one kind"
        )
    if len(kinds) > 1:
        found = "; ".join(
            f"{len(files)} {kind} ({', '.join(files[:2])}{', ...' if len(files) > 2 else ''})"
            for kind, files in kinds.items()
        )
        raise ValueError(
            f"{path}: a data directory must hold files of one kind, it holds {found}; point the "
            "data path at one file, or move the other files out of the directory"
        )


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def _load_file(local: Path, path: str) -> datasets.Dataset:
    builder = _BUILDERS.get(local.suffix.lower())
    if builder is None:
        raise ValueError(f"{path}: unsupported file type; use one of {sorted(_BUILDERS)}")
    if local.stat().st_size == 0:
        raise ValueError(f"dataset file '{path}' is empty")
    if local.suffix.lower() == ".jsonl":
        return _jsonl_dataset(local)
    if local.suffix.lower() == ".csv":
        return _csv_dataset(local)
    try:
        return datasets.load_dataset(builder, data_files=str(local), split="train")
    except Exception as err:  # datasets and Arrow bury the reason several causes deep
        raise ValueError(f"{path}: could not be read as {builder}: {_root_cause(err)}") from err


def _load_dir(local: Path, path: str, split: str, subset: str | None) -> datasets.Dataset:
    if (local / "dataset_info.json").exists() or (local / "state.json").exists():
        ds = datasets.load_from_disk(str(local))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    _check_data_dir(local)
    try:
        return datasets.load_dataset(str(local), subset, split=split)
    except Exception as err:  # as for a file: the reason is several causes deep
        raise ValueError(
            f"{path}: could not be read as a data directory (split '{split}'): {_root_cause(err)}"
        ) from err


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
        ds = _load_file(local, path)
    elif local.is_dir():
        ds = _load_dir(local, path, split, subset)
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
