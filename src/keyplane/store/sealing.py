"""Key material encrypted at rest: AES-256-GCM under a per-node key-encryption key (KEK).

Every column that holds key bytes (link key blocks, end-to-end keys not yet handed out) is
*sealed* by the store before it reaches the database and *opened* when it is read back,
so the database, its WAL and its backups hold ciphertext only; PostgreSQL never sees a
plaintext key nor the KEK.

The KEK of a node lives outside the database: a file of 32 random bytes (written as 64 hex
digits) with mode ``0600`` that ``keyplane certs`` makes beside the node's certificate
(``certs/km/<node>.kek``), or a path from a setting or a mounted secret. A KEK file that
group or others may read is refused, like ssh refuses such a private key.

Sealed value layout (version 1)::

    0x01 | kek_id (4 bytes) | nonce (12 bytes, random) | ciphertext | GCM tag (16 bytes)

``kek_id`` names the KEK (a hash of it, not secret), so a row sealed under a retired KEK
is opened with that one and rewritten under the current KEK on its next write (KEK
rotation, docs/security.md). The associated data is ``keyplane/v1 | node | table | row``,
so a sealed value copied to another row, table or node does not open: rows cannot be
swapped. Random 96-bit nonces keep GCM's bound of 2^32 seals per KEK (NIST SP 800-38D
§8.3); a KM writes one seal per changed block or key batch per commit, so a KEK should be
rotated well before it has sealed a few billion values (years at the measured rates).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyplane.errors import SealedDataError, StoreError
from keyplane.fileperms import PRIVATE_FILE_MODE, ensure_private_dir

__all__ = [
    "KEK_BYTES",
    "KeyRing",
    "Sealer",
    "create_kek_file",
    "ensure_kek_file",
    "read_kek_file",
]

logger = logging.getLogger(__name__)

KEK_BYTES = 32
_VERSION = 1
_HEADER = 1 + 4 + 12
_TAG = 16


def _kek_id(kek: bytes) -> bytes:
    return hashlib.sha256(b"keyplane kek id\0" + kek).digest()[:4]


def read_kek_file(path: str | Path) -> bytes:
    """The KEK in ``path`` (64 hex digits, or 32 raw bytes as a mounted secret may hold).

    Raises:
        StoreError: missing or unreadable, readable by group or others, or not a 32-byte key.
    """
    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
        raw = p.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read the key-encryption key {p}: {exc.strerror}") from exc
    if os.name == "posix" and mode & 0o077:
        raise StoreError(f"key-encryption key {p} has mode {mode:04o}: group and others must "
                         f"have no access (chmod 600, or defaultMode 0400 for a secret)")
    if len(raw) == KEK_BYTES:
        return raw
    try:
        kek = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        kek = b""
    if len(kek) != KEK_BYTES:
        raise StoreError(f"key-encryption key {p} is not {KEK_BYTES} bytes "
                         f"({2 * KEK_BYTES} hex digits)")
    return kek


def create_kek_file(path: str | Path) -> bytes:
    """Make a fresh KEK file (``0600``, its folder ``0700``); fails if it exists.

    Raises:
        FileExistsError: ``path`` exists (never overwrite a KEK: rows sealed under it would
            be lost).
    """
    p = Path(path)
    ensure_private_dir(p.parent)
    kek = secrets.token_bytes(KEK_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(kek.hex() + "\n")
    return kek


def ensure_kek_file(path: str | Path) -> bytes:
    """The KEK in ``path``, made first if the file does not exist (idempotent; two processes
    racing to make it end up with the same key)."""
    p = Path(path)
    if not p.exists():
        try:
            return create_kek_file(p)
        except FileExistsError:
            pass
    return read_kek_file(p)


class Sealer:
    """Seals and opens one node's key columns (AES-256-GCM, see the module docstring).

    Args:
        node: the node whose rows this sealer writes (part of the associated data).
        kek: the current KEK (32 bytes).
        retired: earlier KEKs of the node, for opening rows not yet rewritten.
    """

    def __init__(self, node: str, kek: bytes, retired: tuple[bytes, ...] = ()) -> None:
        if len(kek) != KEK_BYTES or any(len(k) != KEK_BYTES for k in retired):
            raise ValueError(f"a key-encryption key is {KEK_BYTES} bytes")
        self.node = node
        self._kek_id = _kek_id(kek)
        self._aead = AESGCM(kek)
        self._openers = {_kek_id(k): AESGCM(k) for k in (*retired, kek)}
        self._node_aad = b"keyplane/v1\0" + node.encode() + b"\0"

    def __repr__(self) -> str:
        return f"Sealer(node={self.node!r}, kek_id={self._kek_id.hex()})"

    @property
    def kek_id(self) -> str:
        """Hex name of the current KEK (not secret)."""
        return self._kek_id.hex()

    def _aad(self, table: str, row: str) -> bytes:
        return self._node_aad + table.encode() + b"\0" + row.encode()

    def seal(self, table: str, row: str, plaintext: bytes) -> bytes:
        """The sealed form of ``plaintext`` for row ``row`` of ``table``."""
        nonce = secrets.token_bytes(12)
        return (bytes((_VERSION,)) + self._kek_id + nonce
                + self._aead.encrypt(nonce, plaintext, self._aad(table, row)))

    def needs_reseal(self, sealed: bytes) -> bool:
        """Whether ``sealed`` was made under a retired KEK (rewrite it under the current)."""
        return sealed[1:5] != self._kek_id

    def open(self, table: str, row: str, sealed: bytes) -> bytes:
        """The plaintext of a value :meth:`seal` made for the same row.

        Raises:
            SealedDataError: not a sealed value, sealed under an unknown KEK, altered, or
                sealed for another row, table or node.
        """
        if len(sealed) < _HEADER + _TAG or sealed[0] != _VERSION:
            raise SealedDataError(f"{table} row {row} of {self.node}: not a sealed value")
        aead = self._openers.get(sealed[1:5])
        if aead is None:
            raise SealedDataError(
                f"{table} row {row} of {self.node}: sealed under key-encryption key "
                f"{sealed[1:5].hex()}, this node has {self._kek_id.hex()}")
        try:
            return aead.decrypt(sealed[5:_HEADER], sealed[_HEADER:], self._aad(table, row))
        except InvalidTag:
            raise SealedDataError(f"{table} row {row} of {self.node}: the sealed value does "
                                  f"not authenticate (altered, or moved from another row)"
                                  ) from None


class KeyRing:
    """Where each node's KEK comes from: files named per node, else ``<directory>/<node>.kek``.

    Args:
        directory: folder of ``<node>.kek`` files (None: only files given with
            :meth:`use_file`).
        create: make a missing KEK file (the embedded runtime and SQLite's default); else a
            missing file is an error.
    """

    def __init__(self, directory: str | Path | None = None, *, create: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.create = create
        self._files: dict[str, Path] = {}
        self._retired: dict[str, tuple[Path, ...]] = {}
        self._sealers: dict[str, Sealer] = {}

    def __repr__(self) -> str:
        return f"KeyRing(directory={self.directory}, files={sorted(self._files)})"

    def use_file(self, node: str, path: str | Path, *, retired: tuple[str | Path, ...] = ()
                 ) -> None:
        """Take ``node``'s KEK from ``path`` (and open older rows with ``retired`` KEKs)."""
        self._files[node] = Path(path)
        self._retired[node] = tuple(Path(r) for r in retired)
        self._sealers.pop(node, None)

    def has_file(self, node: str) -> bool:
        """Whether a KEK file was named for ``node`` (:meth:`use_file`)."""
        return node in self._files

    def path_of(self, node: str) -> Path | None:
        """The KEK file of ``node`` (None when the ring has neither a file nor a folder)."""
        if node in self._files:
            return self._files[node]
        return self.directory / f"{node}.kek" if self.directory is not None else None

    def sealer(self, node: str) -> Sealer:
        """The sealer of ``node`` (its KEK read once, or made when ``create``).

        Raises:
            StoreError: no KEK configured for ``node``, or its file is unusable.
        """
        s = self._sealers.get(node)
        if s is not None:
            return s
        path = self.path_of(node)
        if path is None:
            raise StoreError(f"no key-encryption key for node {node}: give its file "
                             f"(keyplane certs makes certs/km/{node}.kek)")
        kek = ensure_kek_file(path) if self.create else read_kek_file(path)
        retired = tuple(read_kek_file(r) for r in self._retired.get(node, ()))
        s = self._sealers[node] = Sealer(node, kek, retired)
        logger.info("node %s: key material sealed under KEK %s (%s)", node, s.kek_id, path)
        return s
