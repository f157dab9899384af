"""Atomic writes: a kill during a save never leaves a half-written file where a complete one is expected.

Directories (exports) and files (checkpoints) are written under a temporary name beside their
target, on the same filesystem, then renamed over it. A failed write (disk full, read-only
directory) raises an ``OSError`` naming the target and leaves the previous version in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _failed(path: Path, err: OSError, what: str) -> OSError:
    """The same errno, a message naming the target and saying nothing was replaced."""
    message = (
        f"could not write {what} {path}: {err.strerror or err}; "
        f"the previous {path.name} (if any) is unchanged"
    )
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library to ask (Windows)
        return False
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0


def _recover(path: Path) -> None:
    """Undo what a killed ``atomic_dir`` left: put back a set-aside original, drop temporaries."""
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds and not path.exists():
        olds.pop().rename(path)  # killed between the two renames of the fallback
    for stale in [*olds, *path.parent.glob(f".{path.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, guard: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one step.

    On error the temporary directory is removed and an existing ``path`` is left untouched; an
    ``OSError`` (disk full, read-only directory) is raised again naming ``path``. Leftovers of a
    save that was killed are cleaned up first. Only one process may write a given ``path``.
    ``guard(path)`` raises if what is at ``path`` may not be replaced; it is called before
    anything is written and again just before the swap (whatever is there is deleted then).
    """
    path = Path(path).absolute()
    if guard is not None:
        guard(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _recover(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as err:
        raise _failed(path, err, "directory") from err
    try:
        yield tmp
        if guard is not None:
            guard(path)
        if not path.exists():
            tmp.rename(path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # now the previous version
        else:  # no atomic exchange here: a kill between the renames is undone by _recover
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _failed(path, err, "directory") from err
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary sibling and one rename."""
    path = Path(path).absolute()
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # from a killed save
            stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise _failed(path, err, "file") from err


def check_writable(directory: str | Path, what: str) -> None:
    """Fail now, naming ``directory``, if files cannot be created in it (read-only, no space).

    Creates the directory if needed; ``what`` says which option set it, for the message.
    """
    directory = Path(directory).absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        code = err.errno if err.errno is not None else errno.EACCES
        raise OSError(
            code, f"{what} {directory} is not writable: {err.strerror or err}; choose another"
        ) from err
