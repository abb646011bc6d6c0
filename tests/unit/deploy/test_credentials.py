"""``keyplane deploy install-credentials``: a Secret volume as the kubelet lays it out
(files behind ``..data``, group-readable under an ``fsGroup``) becomes owner-only files a
keyplane process accepts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.deploy import install_credentials
from keyplane.errors import StoreError
from keyplane.store.sealing import create_kek_file, read_kek_file


def _secret_volume(root: Path, files: dict[str, bytes], mode: int = 0o440) -> None:
    """The kubelet's atomic-writer layout: a timestamped folder, ``..data`` pointing at
    it, and one visible symbolic link per top-level entry."""
    stamp = root / "..2026_12_04_10_00_00.123"
    for rel, data in files.items():
        p = stamp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    (root / "..data").symlink_to(stamp.name)
    for top in {Path(rel).parts[0] for rel in files}:
        (root / top).symlink_to(Path("..data") / top)


def test_secret_volume_becomes_owner_only_files(tmp_path: Path) -> None:
    kek_src = tmp_path / "made.kek"
    kek = create_kek_file(kek_src)
    vol = tmp_path / "secret"
    vol.mkdir()
    _secret_volume(vol, {"ca.pem": b"CA", "km/km0.pem": b"CERT", "km/km0.key": b"KEY",
                         "km/km0.kek": kek_src.read_bytes(), "sign/km.km0.key": b"SIGN"})
    # as mounted, keyplane refuses the KEK: its group can read it
    with pytest.raises(StoreError, match="group and others"):
        read_kek_file(vol / "km" / "km0.kek")

    target = tmp_path / "state" / "certs"
    written = install_credentials(vol, target)
    assert written == sorted(Path(p) for p in ["ca.pem", "km/km0.kek", "km/km0.key",
                                                "km/km0.pem", "sign/km.km0.key"])
    assert not any(p.name.startswith("..") for p in target.rglob("*"))
    for p in target.rglob("*"):
        assert not p.is_symlink()
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert (target / "km" / "km0.key").read_bytes() == b"KEY"
    assert read_kek_file(target / "km" / "km0.kek") == kek


def test_cli_reports_a_missing_source(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["deploy", "install-credentials", "--from",
                                   str(tmp_path / "nothing"), "--to", str(tmp_path / "t")])
    assert res.exit_code == 1 and "no credentials" in res.output
    vol = tmp_path / "v"
    vol.mkdir()
    _secret_volume(vol, {"ca.pem": b"CA"})
    res = CliRunner().invoke(app, ["deploy", "install-credentials", "--from", str(vol),
                                   "--to", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "ca.pem").read_bytes() == b"CA"
    assert os.listdir(tmp_path / "t") == ["ca.pem"]
