"""Where each end of a link puts its secret key blocks.

The key manager implements :class:`LinkKeySink` for its link key stores;
:class:`MemoryKeySink` is a real in-memory queue used by tests, benchmarks and tools.
Both ends of a link put the same ``block_id`` with the same material.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["KeyBlock", "LinkKeySink", "MemoryKeySink", "sink_has_room"]


class LinkKeySink(Protocol):
    """Receives the secret key blocks of one end of one or more links.

    A sink may also offer ``has_room() -> bool`` (the KM's link key store does): while it
    returns False the link produces nothing, as a QKD device stops when its buffer is full.
    """

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """Store block ``block_id`` of link ``link_id`` (``material``: packed key bits)."""
        ...


def sink_has_room(sink: object) -> bool:
    """Whether ``sink`` takes more key now (True for a sink without ``has_room``)."""
    has_room = getattr(sink, "has_room", None)
    return True if has_room is None else bool(has_room())


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """One delivered block (material hidden from repr)."""

    link_id: str
    block_id: int
    material: bytes = field(repr=False)

    @property
    def bits(self) -> int:
        """Key length in bits."""
        return 8 * len(self.material)


class MemoryKeySink:
    """An asyncio queue of :class:`KeyBlock` (unbounded unless ``maxsize``)."""

    def __init__(self, maxsize: int = 0) -> None:
        self._queue: asyncio.Queue[KeyBlock] = asyncio.Queue(maxsize)
        self.delivered_blocks = 0
        self.delivered_bits = 0

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """Queue a block (waits while a bounded queue is full)."""
        await self._queue.put(KeyBlock(link_id, block_id, material))
        self.delivered_blocks += 1
        self.delivered_bits += 8 * len(material)

    async def get(self) -> KeyBlock:
        """The oldest block (waits for one)."""
        return await self._queue.get()

    def get_nowait(self) -> KeyBlock:
        """The oldest block.

        Raises:
            asyncio.QueueEmpty: none is queued.
        """
        return self._queue.get_nowait()

    def drain(self) -> list[KeyBlock]:
        """Every queued block, oldest first."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def has_room(self) -> bool:
        """False while a bounded queue is full (the link then pauses)."""
        return self._queue.maxsize <= 0 or self._queue.qsize() < self._queue.maxsize

    def qsize(self) -> int:
        """Blocks queued now."""
        return self._queue.qsize()
