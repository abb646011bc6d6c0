"""Owner-only files and folders for everything keyplane writes that may hold secrets.

The database and its ``-wal`` / ``-shm`` files, ``events.jsonl`` (session ids, SAE names,
key ids), ``endpoints.json``, private keys, key-encryption keys and the demo's outputs
are all created through this module: files ``0600``, folders ``0700`` (issue #13). Two
mechanisms, because not every file is opened by keyplane itself:

* files keyplane opens (:func:`write_private`, :func:`open_private`) are created with mode
  ``0600`` from the start, so there is no window in which another user could open them;
* files a library creates (SQLite makes ``-wal`` and ``-shm`` beside the database, with the
  process umask) are made under :func:`private_umask`, and :func:`restrict` tightens
  whatever already exists (a state folder from an older version).

Windows has no POSIX modes; there the functions only create and write.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "ensure_private_dir",
    "open_private",
    "private_file",
    "private_umask",
    "restrict",
    "write_private",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_UMASK = 0o077


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files and folders owner-only inside the block (the umask is process-wide:
    keep the block short, around the call that creates files)."""
    old = os.umask(_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) owner-only; tighten it if it exists.

    Parents that already exist are left as they are (``/tmp`` must stay ``1777``).
    """
    p = Path(path)
    with private_umask():
        p.mkdir(parents=True, exist_ok=True)
    _chmod(p, PRIVATE_DIR_MODE)
    return p


def _make_parent(p: Path) -> None:
    """Create a missing parent folder owner-only; an existing one is left as it is."""
    if not p.parent.exists():
        ensure_private_dir(p.parent)


def _opener(path: str, flags: int) -> int:
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    with contextlib.suppress(OSError, NotImplementedError):
        os.fchmod(fd, PRIVATE_FILE_MODE)  # an existing file keeps its mode otherwise
    return fd


def open_private(path: str | Path, mode: str = "a", **kwargs: Any) -> IO[Any]:
    """``open()`` that creates the file ``0600`` (and tightens an existing one); a missing
    folder is created ``0700``."""
    p = Path(path)
    _make_parent(p)
    return open(p, mode, opener=_opener, **kwargs)  # the caller closes it


def write_private(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (a ``0600`` temporary file, then rename); a
    missing folder is created ``0700``."""
    p = Path(path)
    _make_parent(p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        _chmod(tmp, PRIVATE_FILE_MODE)
        tmp.replace(p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def private_file(path: str | Path) -> Path:
    """Make sure ``path`` exists as an owner-only file (created empty ``0600`` if missing,
    tightened if present), e.g. a SQLite database before SQLite opens it: SQLite gives its
    ``-wal`` and ``-shm`` files the database file's mode."""
    p = Path(path)
    _make_parent(p)
    os.close(_opener(str(p), os.O_WRONLY | os.O_CREAT))
    return p


def restrict(path: str | Path) -> None:
    """Make ``path`` owner-only: a file ``0600``; a folder ``0700`` with everything in it
    (files ``0600``, sub-folders ``0700``). Symbolic links are not followed."""
    p = Path(path)
    if p.is_symlink() or not p.exists():
        return
    if not p.is_dir():
        _chmod(p, PRIVATE_FILE_MODE)
        return
    _chmod(p, PRIVATE_DIR_MODE)
    for root, dirs, files in os.walk(p):
        for d in dirs:
            q = Path(root, d)
            if not q.is_symlink():
                _chmod(q, PRIVATE_DIR_MODE)
        for f in files:
            q = Path(root, f)
            if not q.is_symlink():
                _chmod(q, PRIVATE_FILE_MODE)


def _chmod(p: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError, NotImplementedError):
        if stat.S_IMODE(p.stat().st_mode) != mode:
            p.chmod(mode)
