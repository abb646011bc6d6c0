"""One end-to-end key a KM holds (:class:`HeldKey`) and the batch it was added with
(:class:`Batch`: one row of the store's ``key_batches``), apart from the vault that indexes
them (:mod:`keyplane.keymanager.vault`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

from keyplane.store.kmstate import KeyBatchRecord

__all__ = ["STATE", "Batch", "HeldKey", "KeyState"]

KeyState = Literal["pending", "ready", "delivered"]
_CODE: dict[str, str] = {"pending": "p", "ready": "r", "delivered": "d"}
STATE: dict[str, KeyState] = {"p": "pending", "r": "ready", "d": "delivered"}
# a batch's columns are read with map() and these (C-level; a list comprehension per column
# cost about twice as much at 1,000 keys)
_ID, _INDEX, _SIZE = attrgetter("key_id"), attrgetter("index"), attrgetter("size_bits")
_STATE, _PROVENANCE = attrgetter("state"), attrgetter("provenance")


@dataclass(slots=True)
class HeldKey:
    """One end-to-end key at one endpoint KM (never printed with its bytes).

    Made per key in bulk: the hot paths pass every field positionally (a keyword argument
    made the call about twice as slow), so the fields keep this order."""

    key_id: str
    session_id: str
    index: int
    size_bits: int
    material: bytes | None = field(repr=False)
    state: KeyState
    sae_id: str | None = None
    peer_sae: str | None = None
    t: float = 0.0
    provenance: list[dict[str, str]] = field(default_factory=list)
    """The hops the key crossed and each hop's key source (hybrid provisioning); replaced,
    never changed in place, so the keys of one relay batch share one list."""
    batch: Batch | None = field(default=None, repr=False, compare=False)
    """The vault's batch holding this key (None: not held by a vault)."""


class Batch:
    """Keys added together: one row of ``key_batches``."""

    __slots__ = ("batch_id", "dead", "full", "keys", "laid", "layout", "left", "packed",
                 "persisted", "session_id")

    def __init__(self, session_id: str, keys: list[HeldKey], batch_id: str | None = None,
                 persisted: bool = False, *, held: bool = False) -> None:
        self.batch_id = batch_id or str(uuid.uuid4())
        self.session_id = session_id
        self.keys = keys
        self.persisted = persisted
        self.dead = False
        # ids, indexes and sizes of ``keys``: built at the first write, reset if one leaves
        self.layout: tuple[list[str], list[int], list[int]] | None = None
        self.packed: list[bytes] = []
        """The store's packed form of :attr:`layout` (filled by the store at the first
        write, reused after: a hand-out from a stored batch packs no ids again)."""
        self.laid = False
        """The stored row holds :attr:`layout` already (a whole row of this id was written
        since the layout was built): an update leaves its ids and indexes alone."""
        self.left = len(keys) if held else sum(1 for k in keys if k.state != "delivered")
        """Keys not handed out yet (the batch's row goes when none is left; ``held``: the
        caller knows none of ``keys`` is, so they are not counted)."""
        self.full = True
        """The next write is the whole row: the held bytes (or which keys hold them) may
        have changed since the last; else only the states and provenance changed."""

    def record(self) -> KeyBatchRecord:
        """The row to write: all of it, or (:attr:`full` False, the row stored) the states
        and provenance only, which the seal is not bound to (a pending batch confirmed)."""
        keys = self.keys
        first = keys[0]
        if self.persisted and not self.full:
            return KeyBatchRecord(
                self.batch_id, self.session_id, first.sae_id, first.peer_sae, first.t,
                [], [], [], "".join(map(_CODE.__getitem__, map(_STATE, keys))), [],
                list(map(_PROVENANCE, keys)), b"", states_only=True)
        self.full = False
        if self.layout is None:
            self.layout = (list(map(_ID, keys)), list(map(_INDEX, keys)),
                           list(map(_SIZE, keys)))
            self.packed, self.laid = [], False
        ids, indexes, sizes = self.layout
        laid, self.laid = self.laid and self.persisted, True
        held = [k.material if k.state != "delivered" and k.material else b"" for k in keys]
        return KeyBatchRecord(
            self.batch_id, self.session_id, first.sae_id, first.peer_sae, first.t,
            ids, indexes, sizes, "".join(map(_CODE.__getitem__, map(_STATE, keys))),
            list(map(len, held)),
            # provenance lists are replaced, never changed in place: no copy needed
            list(map(_PROVENANCE, keys)), b"".join(held), new=not self.persisted,
            packed=self.packed, laid=laid)
