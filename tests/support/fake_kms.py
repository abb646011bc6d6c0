"""Test support: KM responders on the bus for control-plane tests (not product code).

:class:`FakeKms` stands in for the key managers' configuration endpoint only: it
subscribes ``keyplane.km.<node>.config`` for the given nodes, records every
:class:`SessionConfig` / :class:`SessionDelete`, keeps a per-node forwarding table the way
the KM contract defines it (a configuration replaces an entry only with a higher or equal
epoch; a deletion with an epoch removes only that epoch's entry) and answers with
:class:`ConfigAck` / :class:`DeleteConfirm`. Tests can make a node stay silent (no
acknowledgement, so the controller's bound fires) or refuse (``ok=False``).

Tests assert on the forwarding tables (the "fake data plane"), not on message sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType

from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.messages import ConfigAck, DeleteConfirm, SessionConfig, SessionDelete
from tests.support.deadlines import DEADLINE_S, eventually

__all__ = ["FakeKms", "wait_until"]


async def wait_until(pred: Callable[[], bool], timeout_s: float = DEADLINE_S,
                     what: str = "condition") -> None:
    """Poll ``pred`` (real time, bounded by ``KEYPLANE_TEST_DEADLINE_S`` unless told) until
    it holds (:func:`tests.support.deadlines.eventually`).

    Raises:
        AssertionError: it did not hold within ``timeout_s``.
    """
    await eventually(pred, what, timeout_s)


class FakeKms:
    """Configuration responders for ``nodes`` on ``bus``."""

    def __init__(self, bus: Bus, nodes: Iterable[str]) -> None:
        self.bus = bus
        self.nodes = list(nodes)
        self.configs: dict[str, list[SessionConfig]] = {n: [] for n in self.nodes}
        self.deletes: dict[str, list[SessionDelete]] = {n: [] for n in self.nodes}
        self.table: dict[str, dict[str, SessionConfig]] = {n: {} for n in self.nodes}
        self.silent: set[str] = set()
        self.refusing: dict[str, str] = {}
        self._subs: list[Subscription] = []

    async def start(self) -> FakeKms:
        """Subscribe every node's configuration topic."""
        for node in self.nodes:
            self._subs.append(await self.bus.subscribe(topics.km_config(node),
                                                       self._handler(node)))
        return self

    def _handler(self, node: str):  # type: ignore[no-untyped-def]
        async def handle(_topic: str, msg: Message) -> Message | None:
            if isinstance(msg, SessionConfig):
                self.configs[node].append(msg)
                if node in self.silent:
                    return None
                if node in self.refusing:
                    return ConfigAck(session_id=msg.session_id, node=node, epoch=msg.epoch,
                                     ok=False, reason=self.refusing[node])
                current = self.table[node].get(msg.session_id)
                if current is None or msg.epoch >= current.epoch:
                    self.table[node][msg.session_id] = msg
                return ConfigAck(session_id=msg.session_id, node=node, epoch=msg.epoch, ok=True)
            if isinstance(msg, SessionDelete):
                self.deletes[node].append(msg)
                if node in self.silent:
                    return None
                current = self.table[node].get(msg.session_id)
                if current is not None and (msg.epoch is None or msg.epoch == current.epoch):
                    del self.table[node][msg.session_id]
                return DeleteConfirm(session_id=msg.session_id, node=node)
            return None

        return handle

    def holders(self, session_id: str) -> list[str]:
        """Nodes whose forwarding table holds ``session_id``, in node order."""
        return [n for n in self.nodes if session_id in self.table[n]]

    def entry(self, node: str, session_id: str) -> SessionConfig | None:
        """``node``'s forwarding entry for ``session_id``."""
        return self.table[node].get(session_id)

    async def close(self) -> None:
        """Unsubscribe (idempotent)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()

    async def __aenter__(self) -> FakeKms:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
