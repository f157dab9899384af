"""Where an export may go: only over what this package wrote, and by one run at a time.

An export replaces its target directory as a whole (``io.atomic_dir``), so the target must hold
nothing but an earlier export: every export carries a marker file, ``MARKER``; a directory made
by an earlier version (no marker) counts as an export when each of its files is one an export
writes. Anything else (user files, a sub-directory, the working directory, a file, a link) is
refused, naming the path, before anything is written.

A run that will export takes a lock beside the target (``.<name>.lock``: pid, host) from the
start of ``fit`` to the end of the export, so a second run aiming at the same directory fails
at once instead of both reporting success while only one survives.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import time
from pathlib import Path

MARKER = ".lightning_rlhf_export.json"

# what export_hf writes (weights, model and tokenizer files, peft's adapter files and card, the
# stages' *_stats.json): a directory holding only these, with a config, is an unmarked export
EXPORT_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors",
    "README.md", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
    "spiece.model", "chat_template.jinja", "chat_template.json", "*_stats.json",
)  # fmt: skip


def _refused(path: Path, why: str) -> FileExistsError:
    return FileExistsError(
        f"export directory {path} {why}: an export replaces its whole directory, so it only "
        "goes to an absent or empty directory or an earlier export; nothing was written. "
        "Choose another dirpath (e.g. artifacts/<stage>)"
    )


def _written_by_export(entry: Path) -> bool:
    return entry.is_file() and any(fnmatch.fnmatch(entry.name, f) for f in EXPORT_FILES)


def is_export(directory: Path) -> bool:
    """Whether ``directory`` holds an export: our marker, or (an export from before the marker)
    only files an export writes, a config among them."""
    if (directory / MARKER).is_file():
        return True
    entries = list(directory.iterdir())
    configs = {"config.json", "adapter_config.json"} & {p.name for p in entries}
    return bool(configs) and all(map(_written_by_export, entries))


def check_export_target(path: str | Path) -> None:
    """Raise ``FileExistsError`` naming ``path`` unless an export may replace it: absent, an
    empty directory, or an earlier export (:func:`is_export`)."""
    path = Path(path).absolute()
    if path.is_symlink():
        raise _refused(path, f"is a symbolic link (to {os.readlink(path)})")
    if not path.exists():
        return
    if not path.is_dir():
        raise _refused(path, "is a file, not a directory")
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        raise _refused(path, "is the working directory or holds it")
    if not any(path.iterdir()) or is_export(path):
        return
    foreign = sorted(
        p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not _written_by_export(p)
    )
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise _refused(path, f"holds files this package did not write ({shown or 'no model config'})")


def write_marker(directory: Path, about: dict) -> None:
    """The marker that makes ``directory`` an export this package may later replace."""
    from lightning_rlhf import __version__

    payload = {"written_by": "lightning_rlhf", "version": __version__, **about}
    (directory / MARKER).write_text(json.dumps(payload, indent=2) + "\n")


def lock_path(path: str | Path) -> Path:
    path = Path(path).absolute()
    return path.with_name(f".{path.name}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def acquire_lock(path: str | Path) -> Path:
    """Take ``path``'s export lock (created with O_EXCL: one holder); a lock left by a process
    of this host that is no longer running is taken over. Raises ``FileExistsError`` naming the
    holder's pid and host otherwise. Returns the lock file."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if not _stale(holder):
                raise FileExistsError(
                    f"export directory {Path(path).absolute()} is being written by another run "
                    f"(pid {holder.get('pid')} on {holder.get('host')}, lock {lock}): two runs "
                    "exporting to one directory would leave only one of the exports. Give this "
                    "run another dirpath, or remove the lock if that run is no longer running"
                ) from None
            _take_over(lock, holder)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return lock
    raise FileExistsError(f"could not take the export lock {lock}: other runs keep taking it")


def _read(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # being written this instant, or gone: not stale
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict) -> bool:
    """Held by this very process (an earlier fit that did not release it), or by a process of
    this host that is gone. A lock of another host cannot be checked: never stale."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    return pid == os.getpid() or not _alive(pid)


def _take_over(lock: Path, holder: dict) -> None:
    # renamed aside first: of two runs taking over one stale lock, one rename wins; the other
    # puts back a lock that turns out to be fresh
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        lock.rename(aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:
        # a link, not a rename: it never replaces a lock taken in the meantime
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    if _read(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
