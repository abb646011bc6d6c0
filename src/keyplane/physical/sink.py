"""Where each end of a link puts its secret key blocks.

The key manager implements :class:`LinkKeySink` for its link key stores;
:class:`MemoryKeySink` is a real in-memory queue used by tests, benchmarks and tools.
Both ends of a link put the same ``block_id`` with the same material.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["KeyBlock", "LinkKeySink", "MemoryKeySink"]


class LinkKeySink(Protocol):
    """Receives the secret key blocks of one end of one or more links."""

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """Store block ``block_id`` of link ``link_id`` (``material``: packed key bits)."""
        ...


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

    def qsize(self) -> int:
        """Blocks queued now."""
        return self._queue.qsize()
