"""KM-to-KM messages of the device key source (ETSI 014 devices), on the bus.

A master KM hands the key_IDs it got from its end of a device (``enc_keys``) to the KM at
the other end, which fetches the same keys from its end (``dec_keys``) and stores them as
block ``block_id``. Only key_IDs and block ids travel, never key material.
"""

from __future__ import annotations

from keyplane.bus.codec import Message

__all__ = ["DeviceKeyIds", "DeviceKeyIdsAck", "keysource_topic"]


def keysource_topic(node: str) -> str:
    """Where ``node``'s KM takes key_IDs of its device links: ``keyplane.km.<node>.keysource``."""
    return f"keyplane.km.{node}.keysource"


class DeviceKeyIds(Message):
    """The master KM (``sender``) took ``key_ids`` from its end of ``link_id``'s device;
    the receiver stores them, fetched from its own end, as block ``block_id``."""

    KIND = "km.keysource.key_ids"
    VERSION = 1

    sender: str
    link_id: str
    block_id: int
    key_ids: list[str]


class DeviceKeyIdsAck(Message):
    """Whether the receiving KM stored the block (``reason`` when not)."""

    KIND = "km.keysource.key_ids_ack"
    VERSION = 1

    link_id: str
    block_id: int
    ok: bool
    reason: str = ""
