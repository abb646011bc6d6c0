"""Owner-only files and folders (keyplane.fileperms)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from keyplane.fileperms import (
    ensure_private_dir,
    open_private,
    private_file,
    private_umask,
    restrict,
    write_private,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_are_created_0600_in_0700_folders_and_existing_parents_are_left(
        tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    p = write_private(tmp_path / "a" / "b" / "endpoints.json", "{}\n")
    assert p.read_text() == "{}\n" and _mode(p) == 0o600
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path) == 0o755  # an existing parent (think /tmp) is not touched
    assert [q.name for q in p.parent.iterdir()] == ["endpoints.json"]  # no temporary left
    with open_private(tmp_path / "a" / "events.jsonl", "a") as fh:
        fh.write("x\n")
    assert _mode(tmp_path / "a" / "events.jsonl") == 0o600
    loose = tmp_path / "a" / "old.db"
    loose.write_bytes(b"")
    loose.chmod(0o644)
    assert _mode(private_file(loose)) == 0o600


def test_restrict_tightens_a_whole_tree_and_the_umask_is_restored(tmp_path: Path) -> None:
    (tmp_path / "s" / "certs").mkdir(parents=True)
    for name in ("s/keyplane.db-wal", "s/certs/ca.pem"):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(0o644)
    restrict(tmp_path / "s")
    assert {_mode(p) for p in (tmp_path / "s").rglob("*") if p.is_file()} == {0o600}
    assert _mode(tmp_path / "s") == _mode(tmp_path / "s" / "certs") == 0o700
    before = os.umask(0o022)
    try:
        with private_umask():
            (tmp_path / "made-by-a-library").write_bytes(b"x")
        assert _mode(tmp_path / "made-by-a-library") == 0o600
        assert os.umask(0o022) == 0o022  # restored after the block
    finally:
        os.umask(before)
    assert _mode(ensure_private_dir(tmp_path / "s")) == 0o700
