"""TEST SUPPORT: run real key managers deterministically on the virtual clock.

:class:`FailingStore` replaces the store's commit (``RowWriter.write``, where the journal's
transactions end): the real SQL runs on the event loop instead of a worker thread (so "nothing can run" means "only timers are
left") and chosen commits fail, in the two ways a database fails: refused (nothing
written) or written with the acknowledgement lost. :func:`drive` runs a coroutine to its
end, moving the virtual clock to the next timer whenever nothing else can run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar
from unittest import mock

from keyplane.clock import VirtualClock, settle
from keyplane.errors import CommitFailed
from keyplane.store.rowwriter import RowWriter, RowWrites

__all__ = ["FailingStore", "Fault", "drive"]

T = TypeVar("T")
Fault = Literal["ok", "refused", "ack_lost"]


class FailingStore:
    """Replaces ``RowWriter.write``: fails the commits ``faults`` names (by their number,
    counted from when the faults are set), then heals."""

    def __init__(self) -> None:
        self.faults: dict[int, Fault] = {}
        self.refuse_if: Callable[[list[RowWrites]], bool] | None = None
        self.commits = 0
        self.failed = 0

    def fail(self, faults: dict[int, Fault]) -> None:
        self.faults = dict(faults)
        self.commits = 0

    def heal(self) -> None:
        self.faults = {}
        self.refuse_if = None

    def install(self) -> Any:
        """The patch (a context manager) that puts this store in place."""
        store = self

        async def write(writer: RowWriter, build: Callable[[], list[RowWrites]], *,
                        scrub: bool = False) -> None:
            await store.write(writer, build, scrub)
        return mock.patch.object(RowWriter, "write", write)

    async def write(self, writer: RowWriter, build: Callable[[], list[RowWrites]],
                    scrub: bool) -> None:
        writes = build()
        fault = self.faults.get(self.commits, "ok")
        if self.refuse_if is not None and self.refuse_if(writes):
            fault = "refused"
        self.commits += 1
        if fault == "refused":
            self.failed += 1
            raise CommitFailed("injected: the database refused the commit")
        writer._write_sqlite(writes, scrub)  # the real SQL, on the loop
        if fault == "ack_lost":
            self.failed += 1
            raise CommitFailed("injected: the commit's outcome was lost")


async def drive(clock: VirtualClock, aw: Awaitable[T]) -> T:
    """Run ``aw`` to its end, moving the virtual clock whenever only timers are left."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        await settle()
        if task.done():
            break
        deadline = clock.next_deadline()
        assert deadline is not None, "the request waits for something that never comes"
        await clock.advance(max(0.0, deadline - clock.now()))
    return task.result()
