"""TEST SUPPORT: find key bytes (raw, hex, base64) in files, fast enough for megabytes.

A needle is looked up by its first 8 bytes: every file is read as little-endian uint64
words at each of the 8 byte phases, the words are matched against the sorted prefixes with
numpy, and only candidates are compared in full. Long secrets (link key blocks) are cut
into pieces so that any copy of a long enough run of them is found, whatever its offset:
raw and hex pieces of 16 bytes every 16 bytes, base64 pieces of 24 bytes at the three
alignments base64 can have.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Finding", "needles_of", "scan_files"]


@dataclass(frozen=True)
class Finding:
    """A needle found in a file."""

    path: Path
    offset: int
    encoding: str


def _encodings(piece: bytes) -> Iterable[tuple[str, bytes]]:
    yield "raw", piece
    yield "hex", piece.hex().encode()
    yield "HEX", piece.hex().upper().encode()


def needles_of(secret: bytes) -> dict[bytes, str]:
    """Every searched form of ``secret`` (whole if short, else its pieces)."""
    out: dict[bytes, str] = {}
    if len(secret) <= 48:
        for enc, form in _encodings(secret):
            out[form] = enc
        out[base64.b64encode(secret)[:40]] = "base64"
        out[base64.urlsafe_b64encode(secret)[:40]] = "base64url"
        return out
    for at in range(0, len(secret) - 15, 16):
        for enc, form in _encodings(secret[at:at + 16]):
            out[form] = enc
    for align in range(3):
        for at in range(align, len(secret) - 23, 24):
            piece = secret[at:at + 24]
            out[base64.b64encode(piece)] = "base64"
            out[base64.urlsafe_b64encode(piece)] = "base64url"
    return out


def _prefix(form: bytes) -> int:
    return int.from_bytes(form[:8], "little")


def scan_files(paths: Iterable[Path], needles: dict[bytes, str]) -> list[Finding]:
    """Every occurrence of a needle (of at least 8 bytes) in the files."""
    by_prefix: dict[int, list[bytes]] = {}
    for form in needles:
        assert len(form) >= 8
        by_prefix.setdefault(_prefix(form), []).append(form)
    prefixes = np.array(sorted(by_prefix), dtype=np.uint64)
    found: list[Finding] = []
    for path in paths:
        data = path.read_bytes()
        for phase in range(8):
            n = (len(data) - phase) // 8
            if n <= 0:
                continue
            words = np.frombuffer(data, dtype="<u8", count=n, offset=phase)
            for i in np.flatnonzero(np.isin(words, prefixes)):
                at = phase + 8 * int(i)
                for form in by_prefix[int(words[i])]:
                    if data.startswith(form, at):
                        found.append(Finding(path, at, needles[form]))
    return found
