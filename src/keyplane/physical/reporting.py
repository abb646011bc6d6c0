"""What Alice's end of a link tells the rest of the network: events and telemetry.

Alice's end emits ``link_block`` / ``link_block_aborted`` events (element ``qkd``) per block,
but publishes :class:`~keyplane.messages.LinkTelemetry` on ``keyplane.telemetry.link.<link>``
at most once per ``telemetry_interval_s`` of the clock: the blocks since the last message are
summed (bits) and their rates taken over the emulated time they cover; QBER is the latest
block's. The first block's figures go out at once, and nothing before them (a link without
figures yet must not look dead to routing). While the link idles later (store full, or no
block completed) it still publishes a heartbeat each interval carrying the last rate it
achieved, so the Monitoring Element neither declares it down nor sees its rate collapse
because the KMs have enough key. State changes (faults, peer reachability, store full)
publish at once.

It lives apart from :mod:`keyplane.physical.runner` (which owns one per link) because it
is the link's reporting, not its key stream: it reads the runner's counters and state and
never changes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from keyplane.bus import Bus, topics
from keyplane.clock import Clock
from keyplane.config import QuantumLink
from keyplane.errors import KeyplaneError, QberAboveThreshold
from keyplane.events import EventStream, EventType
from keyplane.messages import LinkState, LinkTelemetry
from keyplane.physical.frames import LinkStats, TelemetryWindow

if TYPE_CHECKING:  # annotations only: the KMs' process imports this without the QKD stack
    from keyplane.physical.modules import BlockOutcome

__all__ = ["DEFAULT_TELEMETRY_INTERVAL_S", "LinkReporter"]

logger = logging.getLogger("keyplane.physical.runner")

DEFAULT_TELEMETRY_INTERVAL_S = 1.0
"""At most one LinkTelemetry per link per this many clock seconds."""


class LinkReporter:
    """Events and rate-bounded telemetry of one link's Alice end (see module docstring).

    Args:
        link: the link's configuration.
        clock: the one clock (message times, the telemetry interval).
        bus: where telemetry goes (``None``: events only).
        events: the event stream (``None``: telemetry only).
        stats: the runner's counters (read: aborted blocks).
        interval_s: clock seconds between two telemetry messages (at most).
    """

    def __init__(self, link: QuantumLink, *, clock: Clock, bus: Bus | None,
                 events: EventStream | None, stats: LinkStats, interval_s: float) -> None:
        self.link = link
        self.clock = clock
        self.bus = bus
        self.events = events
        self.stats = stats
        self.interval_s = interval_s
        self.window = TelemetryWindow()

    @property
    def measured(self) -> bool:
        """Whether any figure was measured (a message with rates went out or is due)."""
        return self.window.sent or self.window.blocks > 0

    def block(self, o: BlockOutcome, state: LinkState) -> None:
        """One block completed or aborted at Alice's end: its event, and its figures into
        the window (the first ones published at once)."""
        if self.events is not None:
            data: dict[str, Any] = dict(
                link=self.link.link_id, block_id=o.block_id, status=o.status, qber=o.qber,
                sifted_bits=o.sifted_bits, secret_bits=o.secret_bits,
                leaked_bits=o.leaked_ec_bits + o.leaked_verify_bits,
                ec_efficiency=o.ec_efficiency, reason=o.reason)
            if o.status == "aborted_qber" and o.qber is not None:
                data["reason"] = str(QberAboveThreshold(
                    o.qber, self.link.postprocessing.qber_threshold))
            kind = EventType.link_block if o.status == "delivered" else \
                EventType.link_block_aborted
            self.events.emit(kind, "qkd", node=self.link.endpoints[0], **data)
        self.window.add(o)
        if not self.window.sent and self.bus is not None:
            # the first rate at once (before it, the link has no figures: an early heartbeat
            # with rate 0 would make routing see a dead link); at most one per interval after
            self.spawn(self.publish(self.message(state)))

    def state_changed(self, change: str, state: LinkState, extra_loss_db: float,
                      **data: Any) -> None:
        """A fault, peer or store change: logged, an event, and (once the link has figures,
        or when it goes down) a telemetry message at once."""
        link_id = self.link.link_id
        logger.log(logging.DEBUG if change.startswith("store_") else logging.INFO,
                   "link %s: %s -> %s", link_id, change, state.value)
        if self.events is not None:
            self.events.emit(EventType.link_state, "qkd", node=self.link.endpoints[0],
                             link=link_id, change=change, state=state.value,
                             extra_loss_db=extra_loss_db, **data)
        if self.bus is not None and (self.window.sent or state is LinkState.down):
            # the new state at once, with the last rates (not a rate of 0: nothing was
            # measured yet in the new state); before any figures only ``down`` is news
            w = self.window
            msg = LinkTelemetry(link_id=link_id, node=self.link.endpoints[0], state=state,
                                aborted_blocks=self.stats.aborted_blocks, skr_bps=w.skr_bps,
                                sifted_rate_bps=w.sifted_rate_bps, qber=w.qber,
                                t=self.clock.now())
            self.spawn(self.bus.publish(topics.link_telemetry(link_id), msg))

    def message(self, state: LinkState) -> LinkTelemetry:
        """The telemetry message for the window closing now (see the module docstring)."""
        w = self.window
        sifted, secret, leaked, block_id = w.take()
        w.sent = True
        return LinkTelemetry(
            link_id=self.link.link_id, node=self.link.endpoints[0], state=state,
            block_id=block_id, sifted_bits=sifted, secret_bits=secret, qber=w.qber,
            sifted_rate_bps=w.sifted_rate_bps, skr_bps=w.skr_bps, ec_efficiency=w.ec_efficiency,
            qber_sample_bits=w.qber_sample_bits or None,
            leaked_bits=leaked, aborted_blocks=self.stats.aborted_blocks, t=self.clock.now())

    async def loop(self, running: Callable[[], bool], state: Callable[[], LinkState]) -> None:
        """One telemetry message per interval, whatever the block rate, while ``running()``."""
        while running():
            await self.clock.sleep(self.interval_s)
            if self.measured:  # nothing measured yet: nothing to say
                await self.publish(self.message(state()))

    async def publish(self, msg: LinkTelemetry) -> None:
        """Publish one message; a bus failure is logged (the next interval tries again)."""
        assert self.bus is not None
        try:
            await self.bus.publish(topics.link_telemetry(self.link.link_id), msg)
        except KeyplaneError:
            logger.debug("link %s: telemetry publish failed", self.link.link_id, exc_info=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Publish in the background (callers are synchronous or on the frame's path);
        outside a running loop the message is dropped."""
        async def run() -> None:
            try:
                await coro
            except KeyplaneError:
                logger.debug("link %s: telemetry publish failed", self.link.link_id,
                             exc_info=True)

        try:
            asyncio.get_running_loop().create_task(run())
        except RuntimeError:
            coro.close()
