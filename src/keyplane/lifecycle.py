"""The lifecycle every long-lived keyplane element shares.

An element is started once and closed once (``close()`` is idempotent); ``async with``
does both. Subclasses implement :meth:`start` and :meth:`close`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Service"]


class Service:
    """Base of elements with an async ``start()``/``close()`` lifecycle."""

    async def start(self) -> None:
        """Start the element's tasks and subscriptions."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop everything the element started (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
