"""Lay a mounted Kubernetes Secret out as owner-only files (a pod's init container).

The kubelet writes a Secret volume's files owned by root, or, with the pod's ``fsGroup``,
by that group with group read added to ``defaultMode``: a non-root process either cannot
read them or finds them readable by its group, and keyplane refuses a key-encryption key
that anyone but its owner can read (:func:`keyplane.store.sealing.read_kek_file`). The init
container runs as the same user as the process and copies each file into the pod's
memory-backed state folder, ``0600`` in ``0700`` folders (:mod:`keyplane.fileperms`).

A Secret volume holds its files behind ``..data`` and timestamped ``..<date>`` folders
(the kubelet's atomic writer) and exposes them through symbolic links; only the visible
names are copied, following the links.
"""

from __future__ import annotations

import os
from pathlib import Path

from keyplane.fileperms import ensure_private_dir, write_private

__all__ = ["install_credentials"]


def install_credentials(source: Path, target: Path) -> list[Path]:
    """Copy every visible file under ``source`` to the same relative path under ``target``,
    owner-only; return the files written (relative to ``target``), sorted.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        NotADirectoryError: ``source`` is not a folder.
    """
    if not source.exists():
        raise FileNotFoundError(f"no credentials at {source}")
    if not source.is_dir():
        raise NotADirectoryError(f"{source} is not a folder")
    ensure_private_dir(target)
    written: list[Path] = []
    for root, dirs, files in os.walk(source, followlinks=True):
        # the kubelet's own entries (..data, ..2024_01_01...) start with '..'
        dirs[:] = sorted(d for d in dirs if not d.startswith(".."))
        rel_root = Path(root).relative_to(source)
        for name in sorted(files):
            if name.startswith(".."):
                continue
            rel = rel_root / name
            write_private(target / rel, (Path(root) / name).read_bytes())
            written.append(rel)
    return sorted(written)
