"""What a local model directory must hold before ``from_pretrained`` reads it.

Weights in safetensors only (a pickle, ``*.bin``/``*.pt``, can run code when loaded; a LoRA
adapter directory's ``adapter_model.bin`` too), JSON files that parse, safetensors files as long
as their header says. Each failure names the file and the fix instead of a library's traceback
or a hint that would overwrite the directory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# the JSON files transformers and peft read from a model directory
JSON_FILES = (
    "config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
    "adapter_config.json", "model.safetensors.index.json",
)  # fmt: skip


def missing(name_or_path: str) -> str:
    """The message for a model that is neither a directory here nor loadable from the hub."""
    return (
        f"model '{name_or_path}' is neither a local directory nor a hub model that could be "
        f"loaded. For the embedded default run `python -m lightning_rlhf init-model {name_or_path}`"
        "; for a hub model give its name (e.g. Qwen/Qwen2.5-0.5B) on a machine that can reach it."
    )


def unreadable(name_or_path: str, err: BaseException) -> str:
    """The message for a model that could not be loaded: :func:`missing` when nothing is at
    the path; otherwise what the library said (never an ``init-model`` over the directory)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return missing(name_or_path)
    reason = " ".join(str(err).split())[:300] or type(err).__name__  # one line
    return (
        f"'{name_or_path}' could not be loaded as a model directory (it holds {_listing(path)}):"
        f" {reason}. Point model_name_or_path at an export, a base model directory or a hub model"
    )


def _listing(path: Path) -> str:
    held = (
        sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        if path.is_dir()
        else []
    )
    return ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "nothing"


def check_json_files(directory: Path) -> None:
    """Every JSON file of ``directory`` that transformers reads parses as a JSON object."""
    for name in JSON_FILES:
        file = directory / name
        if not file.is_file():
            continue
        try:
            value = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{file} is not valid JSON ({err}): the model directory is damaged; copy or "
                "export it again"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(f"{file} holds a JSON {type(value).__name__}, not an object")


def check_model_dir(directory: Path) -> None:
    """A directory ``from_pretrained`` can load weights from: a config (``config.json``, or
    ``adapter_config.json`` for a LoRA adapter), readable JSON, complete safetensors."""
    if (
        not (directory / "config.json").is_file()
        and not (directory / "adapter_config.json").is_file()
    ):
        raise FileNotFoundError(
            f"'{directory}' is not a model directory: it has no config.json (it holds "
            f"{_listing(directory)}). Point model_name_or_path at an export, a base model "
            "directory or a hub model"
        )
    check_json_files(directory)
    for file in sorted(directory.glob("*.safetensors")):
        check_safetensors_complete(file)


def check_safetensors_complete(file: Path) -> None:
    """The file holds the 8-byte header length, the header, and every byte of tensor data the
    header describes: a truncated copy or download is named here, not deep in a loader."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        header = f.read(n) if n is not None and n <= size else b""
    try:
        tensors = json.loads(header) if n is not None and len(header) == n else None
        end = max(
            (int(t["data_offsets"][1]) for k, t in tensors.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        tensors = None
    if tensors is None or 8 + n + end > size:
        expected = "" if tensors is None else f", its header describes {8 + n + end}"
        raise ValueError(
            f"{file} is truncated or damaged ({size} bytes{expected}): copy or export the model "
            "again"
        )


def check_path(name_or_path: str) -> Path | None:
    """Fail early, naming the path, when a local-looking path does not exist; the directory
    when it is one (its JSON files checked), None for a hub name."""
    path = Path(name_or_path).expanduser()
    local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if (local or path.parent.is_dir() and str(path.parent) != ".") and not path.is_dir():
        raise FileNotFoundError(missing(name_or_path))
    if not path.is_dir():
        return None
    check_json_files(path)
    return path


# from_pretrained arguments that have their own option (or are the loader's): not in ``extra``
_OWN_ARGUMENTS = {
    "trust_remote_code": "model.model.trust_remote_code",
    "use_safetensors": "nothing (local weights must be safetensors)",
    "dtype": "model.model.dtype",
    "torch_dtype": "model.model.dtype",
    "attn_implementation": "model.model.attn_implementation",
    "output_loading_info": "nothing",
    "num_labels": "nothing (a scalar head has one)",
}


def check_extra(extra: dict[str, Any]) -> None:
    """Refuse ``from_pretrained`` arguments in ``model.model.extra`` that have their own option
    (or that the loader sets): set there they would clash, or bypass the option."""
    own = sorted(extra.keys() & _OWN_ARGUMENTS)
    if own:
        raise ValueError(
            f"model.model.extra may not set {', '.join(own)}: set "
            f"{'; '.join(_OWN_ARGUMENTS[k] for k in own)} instead"
        )


def has_safetensors(name_or_path: str) -> bool:
    """Local directories must hold safetensors (a pickle can run code); hub repos are asked for
    them (True either way: the value of ``from_pretrained``'s ``use_safetensors``)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return True
    adapter = (path / "adapter_config.json").exists()
    # an adapter directory's weights are the adapter's: a base model's safetensors elsewhere
    # do not make its adapter_model.bin safe
    if any(path.glob("adapter_model.safetensors" if adapter else "*.safetensors")):
        return True
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ValueError(
            f"'{name_or_path}' holds only pickled weights (*.bin/*.pt), which can execute code when "
            "loaded; convert them to safetensors first"
        )
    return True
