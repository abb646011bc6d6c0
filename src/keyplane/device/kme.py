"""One end of an emulated QKD device as an ETSI GS QKD 014 KME whose SAE is its node's KM.

A QKD device delivers the same key stream at both ends of its link. Each end here chops
every block the link delivers into keys of the device's fixed size (``key_size_bits``, the
only size its Status offers) and names key ``i`` of block ``b`` with the same UUID at both
ends (:func:`device_key_id`), so the two ends agree on every key without talking.

Who may take which key, without coordination between the ends (so it works whether both
ends run in one ``keyplane device`` process or each on its own host): even-numbered keys of
a block belong to Alice's end (the link's ``endpoints[0]``), odd ones to Bob's. An end's
``enc_keys`` hands out, in order, only the keys it owns; its ``dec_keys`` hands out only
the other end's keys, by key_ID, each once, and only to its own SAE for the peer's SAE as
master. So a key is never given out as "encryption" key at both ends, and a KM that is
master at its end and slave at the other always gets disjoint keys.

A key of the other end that no ``dec_keys`` claims within ``unclaimed_ttl_s`` is destroyed
(its master's KM crashed before handing the key_ID over): the link store of a device is
bounded (``capacity_keys``), and the link pauses while it is full, as hardware does.
Key material is never logged or put in repr.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

from keyplane.clock import Clock
from keyplane.config import QuantumLink
from keyplane.errors import (
    AuthenticationFailed,
    ExtensionNotMet,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyStoreError,
)
from keyplane.keymanager.interface import Caller, DeliveredKey, PairStatus

__all__ = ["DeviceKme", "device_key_id"]

End = Literal["alice", "bob"]
_KEY_ID_LABEL = b"keyplane.device.key_id"


def device_key_id(link_id: str, block_id: int, index: int) -> str:
    """The key_ID both ends give key ``index`` of block ``block_id`` (a UUID, version 8)."""
    digest = hashlib.sha256(_KEY_ID_LABEL + link_id.encode() + b"/"
                            + block_id.to_bytes(8, "big") + index.to_bytes(4, "big")).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: vendor-specific layout (RFC 9562)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


class DeviceKme:
    """The ETSI 014 side of one end of a device (``status``/``enc_keys``/``dec_keys`` of
    :class:`~keyplane.keymanager.interface.ApplicationService`) and that end's key sink.

    Args:
        link: the link the device emulates.
        end: which end this is.
        sae_id: this end's SAE (its KM; by default the node id).
        peer_sae_id: the other end's SAE.
        identity: the certificate subject this end's SAE authenticates with.
        clock: for the unclaimed-key expiry.
        key_size_bits: the device's key size.
        capacity_keys: keys this end stores at most (the link pauses beyond).
        max_keys_per_request: ETSI 014 ``max_key_per_request``.
        unclaimed_ttl_s: how long a key of the other end waits for its ``dec_keys``.
    """

    def __init__(self, link: QuantumLink, end: End, *, sae_id: str, peer_sae_id: str,
                 identity: str, clock: Clock, key_size_bits: int = 256,
                 capacity_keys: int = 65_536, max_keys_per_request: int = 1024,
                 unclaimed_ttl_s: float = 120.0) -> None:
        if key_size_bits % 8 or key_size_bits <= 0:
            raise ValueError("key_size_bits must be a positive multiple of 8")
        self.link_id = link.link_id
        self.end = end
        self.node_id = link.endpoints[0 if end == "alice" else 1]
        self.kme_id = f"{link.link_id}.{self.node_id}"
        peer_node = link.endpoints[1 if end == "alice" else 0]
        self.peer_kme_id = f"{link.link_id}.{peer_node}"
        self.sae_id = sae_id
        self.peer_sae_id = peer_sae_id
        self._identity = identity
        self._clock = clock
        self.key_size_bits = key_size_bits
        self.capacity_keys = capacity_keys
        self.max_keys_per_request = max_keys_per_request
        self.unclaimed_ttl_s = unclaimed_ttl_s
        self._parity = 0 if end == "alice" else 1
        self._own: OrderedDict[str, bytes] = OrderedDict()
        self._peer: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._last_block: int | None = None
        self.keys_delivered = 0
        self.keys_expired = 0

    def __repr__(self) -> str:
        return (f"DeviceKme({self.kme_id!r}, own={len(self._own)}, "
                f"awaiting_dec={len(self._peer)})")

    # ---- the link's sink ---------------------------------------------------------------
    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """Chop a block into keys (``LinkKeySink``).

        Raises:
            KeyStoreError: another link's block, or a block id not above the last one.
        """
        if link_id != self.link_id:
            raise KeyStoreError(f"block of link {link_id!r} sent to a device of {self.link_id!r}")
        if self._last_block is not None and block_id <= self._last_block:
            # a link's block ids only grow, also across restarts (runner.block_id_base)
            raise KeyStoreError(f"link {link_id}: block {block_id} is not new")
        self._last_block = block_id
        size = self.key_size_bits // 8
        now = self._clock.now()
        for i in range(len(material) // size):
            key = material[i * size:(i + 1) * size]
            key_id = device_key_id(link_id, block_id, i)
            if i % 2 == self._parity:
                self._own[key_id] = key
            else:
                self._peer[key_id] = (key, now)

    @property
    def stored_keys(self) -> int:
        """Keys this end holds for its SAE's ``enc_keys`` (read-only, for metrics)."""
        return len(self._own)

    @property
    def unclaimed_keys(self) -> int:
        """Keys of the other end's ``enc_keys`` waiting for this end's ``dec_keys``."""
        return len(self._peer)

    def has_room(self) -> bool:
        """Whether this end stores fewer than ``capacity_keys`` keys (unclaimed ones
        expired first)."""
        self._expire()
        return len(self._own) + len(self._peer) < self.capacity_keys

    def _expire(self) -> None:
        limit = self._clock.now() - self.unclaimed_ttl_s
        while self._peer:
            key_id, (_, t) = next(iter(self._peer.items()))
            if t > limit:
                break
            del self._peer[key_id]
            self.keys_expired += 1

    # ---- ETSI 014 ------------------------------------------------------------------------
    def _check(self, caller: Caller, sae: str, other: str) -> None:
        if sae != self.sae_id or caller.identity != self._identity:
            raise AuthenticationFailed(f"{sae} is not the SAE of KME {self.kme_id}")
        if other != self.peer_sae_id:
            raise KeyNotFound(f"KME {self.kme_id} shares no keys with SAE {other!r}")

    async def status(self, caller: Caller, master_sae: str, slave_sae: str) -> PairStatus:
        """ETSI 014 Status (clause 5.1): keys this end can give its SAE as master now."""
        self._check(caller, master_sae, slave_sae)
        return PairStatus(
            source_kme_id=self.kme_id, target_kme_id=self.peer_kme_id,
            master_sae_id=master_sae, slave_sae_id=slave_sae, key_size=self.key_size_bits,
            stored_key_count=len(self._own), max_key_count=self.capacity_keys,
            max_key_per_request=self.max_keys_per_request,
            max_key_size=self.key_size_bits, min_key_size=self.key_size_bits,
            max_sae_id_count=0)

    async def enc_keys(self, caller: Caller, master_sae: str, slave_sae: str, number: int,
                       size_bits: int, additional_slaves: list[str] | None = None,
                       extensions: dict[str, Any] | None = None) -> list[DeliveredKey]:
        """ETSI 014 Get key (5.2): the next ``number`` keys this end owns, each given once.

        Raises:
            AuthenticationFailed: not this end's SAE.
            KeyNotFound: ``slave_sae`` is not the other end's SAE, or there are additional
                slaves (a point-to-point device has none).
            InsufficientKeyMaterial: fewer than ``number`` keys stored (none is taken).
        """
        self._check(caller, master_sae, slave_sae)
        if additional_slaves:
            raise KeyNotFound("a QKD device link has no additional slave SAEs")
        if size_bits != self.key_size_bits:
            raise InsufficientKeyMaterial(f"this device makes {self.key_size_bits}-bit keys only")
        if number > len(self._own):
            raise InsufficientKeyMaterial(
                f"KME {self.kme_id}: {number} keys asked, {len(self._own)} stored")
        out = []
        for _ in range(number):
            key_id, key = self._own.popitem(last=False)
            out.append(DeliveredKey(key_id, key))
        self.keys_delivered += number
        return out

    async def dec_keys(self, caller: Caller, slave_sae: str, master_sae: str,
                       key_ids: list[str], *, acknowledge: bool = False,
                       confirm: Sequence[str] = ()) -> list[DeliveredKey]:
        """ETSI 014 Get key with key IDs (5.3): keys the other end gave its SAE, each once.

        Raises:
            AuthenticationFailed: not this end's SAE.
            KeyNotFound: ``master_sae`` is not the other end's SAE, or a key_ID is unknown,
                expired or already delivered (then none is taken).
            ExtensionNotMet: the keyplane acknowledgement was asked (a KM feature).
        """
        self._check(caller, slave_sae, master_sae)
        if acknowledge or confirm:
            raise ExtensionNotMet("keyplane_ack / keyplane_confirm: a device KME spends "
                                  "keys on delivery (no acknowledgement)")
        self._expire()
        missing = [k for k in key_ids if k not in self._peer]
        if missing:
            raise KeyNotFound(f"KME {self.kme_id}: no key {missing[0]} for {slave_sae}")
        out = [DeliveredKey(k, self._peer.pop(k)[0]) for k in key_ids]
        self.keys_delivered += len(out)
        return out
