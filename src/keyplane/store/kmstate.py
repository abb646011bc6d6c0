"""A key manager's tables: link key blocks, key batches, key streams and session rows.

The KM keeps its state in memory (:mod:`keyplane.keymanager.keystore`,
:mod:`keyplane.keymanager.vault`) and hands this repository *records* (plain dataclasses
with plaintext key bytes); the repository turns them into rows, sealing every key byte
under the writing node's key-encryption key (:mod:`keyplane.store.sealing`), and reads them
back, opening them. Nothing outside ``store/`` sees a table, a statement or a database
exception: failures are :class:`~keyplane.errors.CommitFailed` (writes),
:class:`~keyplane.errors.StoreError` (reads) and
:class:`~keyplane.errors.SealedDataError` (a row that does not open).

Writes go through :meth:`KmStateStore.commit`: every record of one group commit, in one
transaction (:class:`~keyplane.store.rowwriter.RowWriter`).

Associated data of a sealed value (so no row's ciphertext opens in another row): a block
is bound to ``link_id/block_id/size``; a batch to its id, session and the digest of its key
ids, indexes and byte lengths (which bytes belong to which key): of the packed columns
(``layout`` 2), or, for rows written before migration 0003, of their JSON lists (layout 1;
such a row is written again, packed, when its KM loads it).

A batch row's per-key columns are packed (:class:`~keyplane.store.models.KeyBatchRow`):
building, sealing and writing a 100-key row costs a few microseconds of packing instead of
a JSON encoding per column and per key (issue #15).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select

from keyplane.errors import StoreError
from keyplane.store.db import Database
from keyplane.store.models import KeyBatchRow, KeyStreamRow, LinkKeyBlockRow, SessionRow
from keyplane.store.rowwriter import RowWriter, RowWrites
from keyplane.store.sealing import Sealer

__all__ = [
    "BlockRecord",
    "BlockWrites",
    "KeyBatchRecord",
    "KeyWrites",
    "KmStateStore",
    "SessionRecord",
    "SessionWrites",
    "StreamRecord",
]

_BLOCKS: Table = LinkKeyBlockRow.__table__  # type: ignore[assignment]
_BATCHES: Table = KeyBatchRow.__table__  # type: ignore[assignment]
_STREAMS: Table = KeyStreamRow.__table__  # type: ignore[assignment]
_SESSIONS: Table = SessionRow.__table__  # type: ignore[assignment]


@dataclass
class BlockRecord:
    """A link key block as one end holds it (plaintext ``material``).

    Written: consumed bytes zero, or ``material`` None: only the offsets change (the stored
    bytes stay as they are; :class:`~keyplane.keymanager.keystore.LinkKeyStore` rewrites
    them within ``link_block_rewrite_s``). Read back: the stored bytes, in which consumed
    ranges may still hold the spent key (the reader zeroes them)."""

    block_id: int
    size_bytes: int
    tx_reserved_bytes: int
    rx_consumed: list[list[int]]
    material: bytes | None = field(repr=False)
    created_t: float = 0.0
    new: bool = False
    """Not in the database yet (insert, else update)."""
    reseal: bool = False
    """Read back in plaintext or under a retired KEK: rewrite it sealed (read side only)."""


@dataclass
class BlockWrites:
    """Changes to one end's blocks of one link."""

    node: str
    link_id: str
    blocks: list[BlockRecord] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)


@dataclass
class KeyBatchRecord:
    """A batch of end-to-end keys (see :class:`~keyplane.store.models.KeyBatchRow`);
    ``material`` is the plaintext concatenation of the held keys' bytes."""

    batch_id: str
    session_id: str
    sae_id: str | None
    peer_sae: str | None
    t: float
    key_ids: list[str]
    indexes: list[int]
    size_bits: list[int]
    states: str
    lengths: list[int]
    provenance: list[list[dict[str, str]]]
    material: bytes = field(repr=False)
    new: bool = False
    reseal: bool = False
    states_only: bool = False
    """Write ``states`` and ``provenance`` only (the row is stored and its ids, indexes,
    lengths and sealed bytes are unchanged; the other fields are not read)."""
    packed: list[bytes] = field(default_factory=list, repr=False)
    """The store's cache of the packed ``key_ids``, ``indexes`` and ``size_bits`` (empty:
    packed at this write and kept here; the caller keeps it with the batch, so a later
    write of the same keys packs nothing)."""
    laid: bool = False
    """An update of a row that already holds these ids and indexes (layout 2): written
    without them (a key handed out changes the states, lengths and sealed bytes only)."""


@dataclass
class StreamRecord:
    """Delivered index ranges of a session at one KM."""

    session_id: str
    delivered: list[list[int]]
    updated_t: float = 0.0
    new: bool = False


@dataclass
class KeyWrites:
    """Changes to one KM's key batches and streams."""

    node: str
    batches: list[KeyBatchRecord] = field(default_factory=list)
    batch_deletes: list[str] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    stream_deletes: list[str] = field(default_factory=list)


@dataclass
class SessionRecord:
    """A session's state and configuration at one KM."""

    session_id: str
    state: str
    config: dict[str, Any]
    updated_t: float = 0.0
    new: bool = False


@dataclass
class SessionWrites:
    """Changes to one KM's session rows."""

    node: str
    rows: list[SessionRecord] = field(default_factory=list)


Writes = BlockWrites | KeyWrites | SessionWrites


def _block_row(link_id: str, block_id: int, size_bytes: int) -> str:
    return f"{link_id}/{block_id}/{size_bytes}"


def _batch_row(batch_id: str, session_id: str, key_ids: Sequence[str], indexes: Sequence[int],
               lengths: Sequence[int]) -> str:
    """A layout-1 row's associated data (rows from before migration 0003)."""
    layout = json.dumps([list(key_ids), list(indexes), list(lengths)], separators=(",", ":"))
    return f"{batch_id}/{session_id}/{hashlib.sha256(layout.encode()).hexdigest()}"


_LAYOUT = 2
"""The batch row layout this version writes (see :class:`KeyBatchRow`)."""


def _packed_row(batch_id: str, session_id: str, key_ids: bytes, indexes: bytes, lengths: bytes
                ) -> str:
    """A layout-2 row's associated data: over the packed ids, indexes and lengths (each
    preceded by its length: unambiguous)."""
    sizes = struct.pack("<3I", len(key_ids), len(indexes), len(lengths))
    digest = hashlib.sha256(b"".join((sizes, key_ids, indexes, lengths)))
    return f"{batch_id}/{session_id}/{digest.hexdigest()}"


def _pack(values: Sequence[int], code: str) -> bytes:
    """Little-endian ``q`` (int64) or ``i`` (int32) values, one ``struct`` call."""
    return struct.pack(f"<{len(values)}{code}", *values)


def _unpack(data: bytes, code: str) -> list[int]:
    return list(struct.unpack(f"<{len(data) // struct.calcsize(code)}{code}", data))


def _pack_ids(batch_id: str, key_ids: Sequence[str]) -> bytes:
    """``u`` and 16 bytes per id when every id is a lowercase UUID (ETSI 014's key_IDs;
    checked with a few passes over the joined ids, no regex), else ``t`` and the
    comma-separated ids.

    Raises:
        StoreError: an id that is no UUID holds a comma.
    """
    n = len(key_ids)
    text = "".join(key_ids)
    if n and len(text) == 36 * n and text.count("-") == 4 * n and (
            text[8::36] == text[13::36] == text[18::36] == text[23::36] == "-" * n):
        digits = text.replace("-", "")
        if digits == digits.lower():
            try:
                packed = bytes.fromhex(digits)
            except ValueError:
                packed = b""
            if len(packed) == 16 * n:  # (fromhex skips whitespace: the length tells)
                return b"u" + packed
    text = ",".join(key_ids)
    if text.count(",") != max(0, n - 1):
        raise StoreError(f"key batch {batch_id}: a key_ID holds a comma; not stored")
    return b"t" + text.encode()


def _unpack_ids(data: bytes) -> list[str]:
    if data[:1] == b"u":
        h = data[1:].hex()
        return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
                f"{h[i + 20:i + 32]}" for i in range(0, len(h), 32)]
    text = data[1:].decode()
    return text.split(",") if text else []


def _runs(provenance: Sequence[list[dict[str, str]]]) -> list[list[Any]]:
    """Per-key provenance lists as runs ``[[count, records], ...]`` (the keys of a relay
    batch share one list: one run; compared by identity first)."""
    if provenance and provenance.count(provenance[0]) == len(provenance):
        return [[len(provenance), provenance[0]]]  # one run: counted at C speed
    out: list[list[Any]] = []
    last: list[dict[str, str]] | None = None
    for p in provenance:
        if out and (p is last or p == last):
            out[-1][0] += 1
        else:
            out.append([1, p])
            last = p
    return out


def _unruns(runs: Sequence[Sequence[Any]]) -> list[list[dict[str, str]]]:
    out: list[list[dict[str, str]]] = []
    for count, records in runs:
        shared = list(records or [])
        out.extend([shared] * count)
    return out


class KmStateStore:
    """The repository of the key managers writing to one database.

    Args:
        db: the database (its key ring seals each node's rows).
        scrub_interval_s: see :class:`~keyplane.store.rowwriter.RowWriter`.
    """

    def __init__(self, db: Database, *, scrub_interval_s: float = 1.0) -> None:
        self._db = db
        self._writer = RowWriter(db, scrub_interval_s=scrub_interval_s)

    @property
    def rows_written(self) -> int:
        """Rows written by committed transactions so far (a figure for benchmarks)."""
        return self._writer.rows_written

    @property
    def checkpoints(self) -> int:
        """WAL-truncating checkpoints run so far (SQLite)."""
        return self._writer.checkpoints

    def sealer(self, node: str) -> Sealer:
        """The sealer of ``node``.

        Raises:
            StoreError: no usable key-encryption key for ``node``.
        """
        return self._db.keyring.sealer(node)

    # ---- writing ------------------------------------------------------------------------
    async def commit(self, writes: Sequence[Writes]) -> None:
        """Write every change in one transaction (key bytes sealed on the way).

        Raises:
            CommitFailed: the transaction failed (nothing of it was written).
            StoreError: a node has no usable key-encryption key (nothing was written).
        """
        scrub = any(isinstance(w, BlockWrites) or (isinstance(w, KeyWrites) and (
            w.batches or w.batch_deletes)) for w in writes)
        # sealers are looked up here, on the loop, so a KEK file is read once and by one task
        sealers = {w.node: self.sealer(w.node) for w in writes
                   if isinstance(w, BlockWrites | KeyWrites)}
        await self._writer.write(lambda: self._rows(writes, sealers), scrub=scrub)

    def _rows(self, writes: Sequence[Writes], sealers: dict[str, Sealer]) -> list[RowWrites]:
        out: dict[str, RowWrites] = {}

        def of(t: Table) -> RowWrites:
            w = out.get(t.name)
            if w is None:
                w = out[t.name] = RowWrites(t)
            return w
        for w in writes:
            if isinstance(w, BlockWrites):
                self._block_rows(w, sealers[w.node], of(_BLOCKS))
            elif isinstance(w, KeyWrites):
                self._key_rows(w, sealers[w.node], of(_BATCHES), of(_STREAMS))
            else:
                rows = of(_SESSIONS)
                for r in w.rows:
                    row = {"node": w.node, "session_id": r.session_id, "state": r.state,
                           "config": r.config, "updated_t": r.updated_t}
                    (rows.inserts if r.new else rows.updates).append(row)
        return list(out.values())

    @staticmethod
    def _block_rows(w: BlockWrites, sealer: Sealer, rows: RowWrites) -> None:
        for b in w.blocks:
            row: dict[str, Any] = {"node": w.node, "link_id": w.link_id,
                                   "block_id": b.block_id,
                                   "tx_reserved_bytes": b.tx_reserved_bytes,
                                   "rx_consumed": b.rx_consumed}
            if b.material is not None:  # else the offsets only: a smaller write (issue #15)
                row.update(material=sealer.seal(
                    "link_key_blocks", _block_row(w.link_id, b.block_id, b.size_bytes),
                    b.material), sealed=True)
            elif b.new:
                raise StoreError(f"link {w.link_id}: block {b.block_id} inserted without "
                                 "its material")
            if b.new:
                row.update(size_bytes=b.size_bytes, created_t=b.created_t)
                rows.inserts.append(row)
            else:
                rows.updates.append(row)
        rows.deletes.extend({"node": w.node, "link_id": w.link_id, "block_id": i}
                            for i in w.deletes)

    @staticmethod
    def _key_rows(w: KeyWrites, sealer: Sealer, batches: RowWrites, streams: RowWrites
                  ) -> None:
        for b in w.batches:
            if b.states_only:  # a smaller update: the sealed columns stay as they are
                batches.updates.append({"node": w.node, "batch_id": b.batch_id,
                                        "states": b.states, "provenance": _runs(b.provenance)})
                continue
            packed = b.packed
            if len(packed) != 3:  # packed once per batch layout (the caller keeps the list)
                packed = [_pack_ids(b.batch_id, b.key_ids), _pack(b.indexes, "q"),
                          _pack(b.size_bits, "i")]
                # one assignment of the whole list: two writers (a cancelled commit's
                # thread and the next) can never leave it with more than three items
                b.packed[:] = packed
            ids, indexes, size_bits = packed
            lengths = _pack(b.lengths, "i")
            sealed = sealer.seal("key_batches", _packed_row(
                b.batch_id, b.session_id, ids, indexes, lengths), b.material)
            # the lengths of a stored batch change too (a key handed out leaves the
            # material); an update of a layout-1 row makes it layout 2 (its ids and indexes
            # written too, so the row holds exactly what the seal is bound to); a row that
            # holds them already (``laid``) is not sent them again
            row: dict[str, Any] = {"node": w.node, "batch_id": b.batch_id, "states": b.states,
                                   "provenance": _runs(b.provenance), "material": sealed,
                                   "lengths": lengths}
            if b.new:
                row.update(sealed=True, key_ids=ids, indexes=indexes, layout=_LAYOUT,
                           session_id=b.session_id, sae_id=b.sae_id, peer_sae=b.peer_sae,
                           t=b.t, size_bits=size_bits)
                batches.inserts.append(row)
            else:
                if not b.laid:
                    row.update(sealed=True, key_ids=ids, indexes=indexes, layout=_LAYOUT)
                batches.updates.append(row)
        batches.deletes.extend({"node": w.node, "batch_id": i} for i in w.batch_deletes)
        for s in w.streams:
            row = {"node": w.node, "session_id": s.session_id, "delivered": s.delivered,
                   "updated_t": s.updated_t}
            (streams.inserts if s.new else streams.updates).append(row)
        streams.deletes.extend({"node": w.node, "session_id": sid} for sid in w.stream_deletes)

    # ---- reading ------------------------------------------------------------------------
    async def load_blocks(self, node: str, link_id: str) -> list[BlockRecord]:
        """Every stored block of ``node``'s end of ``link_id``, opened.

        Raises:
            StoreError: the database failed. SealedDataError: a block does not open.
        """
        return (await self.load_node_blocks(node, [link_id]))[link_id]

    async def load_node_blocks(self, node: str, link_ids: Sequence[str]
                               ) -> dict[str, list[BlockRecord]]:
        """Every stored block of ``node``'s ends of ``link_ids``, opened, by link (one query
        for all of a node's links: a KM's start is one query, not one per link).

        Raises:
            StoreError: the database failed. SealedDataError: a block does not open.
        """
        sealer = self.sealer(node)
        out: dict[str, list[BlockRecord]] = {lid: [] for lid in link_ids}
        async with self._db.session() as s:
            rows = (await s.execute(select(LinkKeyBlockRow).where(
                LinkKeyBlockRow.node == node, LinkKeyBlockRow.link_id.in_(list(link_ids)))
            )).scalars().all()
            found = [(r.link_id, r.block_id, r.size_bytes, r.tx_reserved_bytes, r.rx_consumed,
                      r.material, r.created_t, r.sealed) for r in rows]
        for link_id, block_id, size, reserved, consumed, material, created, sealed in found:
            if sealed:
                plain = sealer.open("link_key_blocks", _block_row(link_id, block_id, size),
                                    material)
            else:
                plain = material
            out[link_id].append(BlockRecord(
                block_id, size, reserved, [list(x) for x in consumed], plain, created,
                reseal=not sealed or sealer.needs_reseal(material)))
        for blocks in out.values():
            blocks.sort(key=lambda b: b.block_id)
        return out

    async def load_key_batches(self, node: str) -> list[KeyBatchRecord]:
        """Every key batch ``node`` holds, opened.

        Raises:
            StoreError: the database failed. SealedDataError: a batch does not open.
        """
        sealer = self.sealer(node)
        async with self._db.session() as s:
            rows = (await s.execute(select(KeyBatchRow).where(KeyBatchRow.node == node)
                                    )).scalars().all()
            found = [(KeyBatchRecord(
                r.batch_id, r.session_id, r.sae_id, r.peer_sae, r.t,
                _unpack_ids(r.key_ids), _unpack(r.indexes, "q"),
                _unpack(r.size_bits, "i"), r.states, _unpack(r.lengths, "i"),
                _unruns(r.provenance), r.material, reseal=not r.sealed), r.layout, r.key_ids,
                r.indexes, r.lengths) for r in rows]
        out: list[KeyBatchRecord] = []
        for b, layout, ids, indexes, lengths in found:
            out.append(b)
            if b.reseal:
                continue
            sealed = b.material
            row = (_packed_row(b.batch_id, b.session_id, ids, indexes, lengths)
                   if layout == _LAYOUT else
                   _batch_row(b.batch_id, b.session_id, b.key_ids, b.indexes, b.lengths))
            b.material = sealer.open("key_batches", row, sealed)
            b.reseal = layout != _LAYOUT or sealer.needs_reseal(sealed)
        return out

    async def load_streams(self, node: str) -> list[StreamRecord]:
        """The delivered ranges of every stream of ``node``.

        Raises:
            StoreError: the database failed.
        """
        async with self._db.session() as s:
            rows = (await s.execute(select(KeyStreamRow).where(KeyStreamRow.node == node)
                                    )).scalars().all()
            return [StreamRecord(r.session_id, [list(x) for x in r.delivered], r.updated_t)
                    for r in rows]

    async def load_sessions(self, node: str) -> list[SessionRecord]:
        """Every session row of ``node``.

        Raises:
            StoreError: the database failed.
        """
        async with self._db.session() as s:
            rows = (await s.execute(select(SessionRow).where(SessionRow.node == node)
                                    )).scalars().all()
            return [SessionRecord(r.session_id, r.state, dict(r.config), r.updated_t)
                    for r in rows]

    async def close(self) -> None:
        """Finish the writer (a last WAL truncation on SQLite)."""
        await self._writer.close()
