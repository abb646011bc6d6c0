"""A link's continuous key stream: frames paced on the clock, blocks into both ends' sinks.

:class:`LinkRunner` runs the local end(s) of one quantum link. Alice's end owns the
emulated fibre, so pacing, faults and telemetry live there: each frame stands for
``frame_duration_s`` of emulated time (``repetition_rate_hz * frame_duration_s`` pulses),
and Alice sleeps on the injected clock until the frame's end before starting the next,
so the secret-key rate seen by the key managers is the physics' rate in clock time
(with a :class:`~keyplane.clock.VirtualClock`, as fast as the CPU allows). Bob's end just
follows the frames it receives.

Modes (``QuantumLink.protocol``):

* ``bb84-decoy`` — the full stack of :mod:`keyplane.physical.modules`.
* ``analytic`` — no per-bit simulation: every frame adds ``R * frame_duration_s`` bits
  (``R`` from :func:`~keyplane.physical.analytic.analytic_rate_bps`); whole bytes go out
  as one block, announced to Bob with :class:`~keyplane.physical.wire.AnalyticBlock`.
  The material is SHAKE-256(per-link seed || block id) at both ends: this mode emulates the
  *rate* of a link, its keys are not secret (anyone with the run's seed can compute them).

Pacing like hardware: a frame of ``frame_duration_s`` emulated seconds takes
``frame_duration_s / time_scale`` seconds of the clock (``time_scale`` > 1 for fast tests);
a link that fell behind (its frames took longer to compute than they stand for) starts the
next frame at once but never runs a burst of frames to catch up, so it never produces
faster than its physics. While a local sink says it has no room
(:meth:`~keyplane.physical.sink.LinkKeySink.has_room`, the KM's store at capacity) Alice
sends no frame: the link idles, one cheap check per frame, and resumes when room is back
(``link_state`` events ``store_full`` / ``store_room``).

Faults (Python API here, bus command :class:`~keyplane.physical.wire.LinkCommand` on
``keyplane.control.link.<link>``): :meth:`LinkRunner.cut`, :meth:`LinkRunner.degrade`,
:meth:`LinkRunner.restore`, :meth:`LinkRunner.set_eavesdropper`. A cut link's fibre
transmits nothing: frames carry only dark counts and no block completes.

Events and telemetry (rate-bounded, with heartbeats while idle) are Alice's end's
:class:`~keyplane.physical.reporting.LinkReporter`.

Distributed links (each end in its own process): before every frame Alice waits for Bob
(:meth:`~keyplane.physical.channel.ClassicalChannel.wait_peer`, one round trip when he is
there), so no frame is sent into the void while Bob's process starts or restarts; after
``rendezvous_timeout_s`` of clock time without him the link reports ``down``
(``link_state`` change ``peer_unreachable``, then ``peer_reachable``). Alice
resynchronizes Bob (:class:`~keyplane.physical.wire.Sync`) when she starts, when his boot
nonce changed (he restarted) and after any lost exchange. Block ids start at
:func:`block_id_base` of the wall clock (or ``first_block_id``) and only grow, so a
restarted Alice never reuses an id delivered before her restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

import numpy as np

from keyplane.bus import Bus, Subscription
from keyplane.bus.codec import Message
from keyplane.clock import Clock
from keyplane.config import Eavesdropper, QuantumLink
from keyplane.errors import ClassicalChannelError, ClassicalChannelTimeout, KeyplaneError
from keyplane.events import EventStream
from keyplane.lifecycle import Service
from keyplane.messages import LinkState
from keyplane.physical import analytic, analytic_stream
from keyplane.physical.channel import (
    DEFAULT_PEER_TIMEOUT_S,
    DEFAULT_PING_TIMEOUT_S,
    DEFAULT_RENDEZVOUS_TIMEOUT_S,
    BusChannel,
    ClassicalChannel,
    InProcessChannel,
)
from keyplane.physical.frames import (
    BLOCK_ID_SHIFT,
    MAX_BLOCK_ID,
    End,
    LinkStats,
    block_id_base,
    default_frame_duration,
    link_rng_seed,
)
from keyplane.physical.measured import measured_physics
from keyplane.physical.modules import AliceModule, BlockOutcome, BobModule
from keyplane.physical.physics import LinkPhysics
from keyplane.physical.reporting import DEFAULT_TELEMETRY_INTERVAL_S, LinkReporter
from keyplane.physical.sink import LinkKeySink, sink_has_room
from keyplane.physical.wire import (
    LinkCommand,
    LinkCommandReply,
    Sync,
    SyncAck,
    control_topic,
)

__all__ = [
    "BLOCK_ID_SHIFT",
    "DEFAULT_TELEMETRY_INTERVAL_S",
    "FIRST_BLOCK_GATE_FRAMES",
    "MAX_BLOCK_ID",
    "LinkRunner",
    "LinkStats",
    "block_id_base",
    "default_frame_duration",
    "link_rng_seed",
]

logger = logging.getLogger(__name__)

FIRST_BLOCK_GATE_FRAMES = 4
"""Frames Alice may hold a shared first-block gate for (a link that makes no block, e.g. a
cut one, lets the next link start after these)."""


class LinkRunner(Service):
    """Runs the local end(s) of one link continuously (see module docstring).

    Args:
        link: the link's configuration.
        clock: the one clock (pacing).
        seed: run seed; each end's generator is derived from it and the link id.
        alice_sink: where Alice's end (``endpoints[0]``) puts blocks; required if local.
        bob_sink: where Bob's end puts blocks; required if local.
        bus: for telemetry, the control topic, and the channel when one end is remote.
        events: the event stream (Monitoring Element's feed).
        local_ends: which ends run in this process.
        frame_duration_s: emulated time per frame (default :func:`default_frame_duration`).
        cascade_schedule: Cascade block-size schedule (see :mod:`.cascade`; default the
            link's ``postprocessing.cascade_schedule``).
        analytic_ec_efficiency: ``f`` used by the analytic rate.
        peer_timeout_s: transport timeout on the peer module.
        rendezvous_timeout_s: clock seconds Alice waits for an absent Bob before the
            link reports ``down`` (she keeps waiting; no frame is sent meanwhile).
        first_block_id: Alice's first frame and block id; default
            :func:`block_id_base` of ``clock.wall()`` at :meth:`start`. Must exceed every
            id this link's Alice end delivered before.
        time_scale: emulated seconds per clock second (1: real time, like hardware).
        telemetry_interval_s: clock seconds between two telemetry messages (at most).
        first_block_gate: shared by the runners of one process (a link worker): Alice
            holds it from her first frame until her first block ran (delivered or not),
            for at most :data:`FIRST_BLOCK_GATE_FRAMES` frames, and after that sends no
            frame while another link holds it. So the links' first blocks come one after
            another, before any second block, instead of all together at the end (three
            links sharing the CPU for their first blocks made each wait for all three).

    Raises:
        ValueError: a missing sink or bus, ``first_block_id`` outside [0, 2^63), or a
            ``time_scale`` or ``telemetry_interval_s`` that is not positive.
    """

    def __init__(self, link: QuantumLink, *, clock: Clock, seed: int = 0,
                 alice_sink: LinkKeySink | None = None, bob_sink: LinkKeySink | None = None,
                 bus: Bus | None = None, events: EventStream | None = None,
                 local_ends: tuple[End, ...] = ("alice", "bob"),
                 frame_duration_s: float | None = None, cascade_schedule: str | None = None,
                 analytic_ec_efficiency: float = 1.16,
                 peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
                 rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S,
                 first_block_id: int | None = None, time_scale: float = 1.0,
                 telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
                 first_block_gate: asyncio.Lock | None = None) -> None:
        if not (time_scale > 0 and telemetry_interval_s > 0):
            raise ValueError("time_scale and telemetry_interval_s must be positive")
        if first_block_id is not None and not 0 <= first_block_id <= MAX_BLOCK_ID:
            raise ValueError("first_block_id must be within [0, 2^63)")
        if not local_ends:
            raise ValueError("a runner needs at least one local end")
        if "alice" in local_ends and alice_sink is None:
            raise ValueError("alice_sink is required when Alice's end is local")
        if "bob" in local_ends and bob_sink is None:
            raise ValueError("bob_sink is required when Bob's end is local")
        if len(local_ends) == 1 and bus is None:
            raise ValueError("a bus is required when the other end is remote")
        self.link = link
        self.link_id = link.link_id
        self.clock = clock
        self.seed = seed
        self.bus = bus
        self.events = events
        self.local_ends = tuple(local_ends)
        self.frame_duration_s = frame_duration_s or default_frame_duration(link)
        self.cascade_schedule = cascade_schedule
        self.analytic_ec_efficiency = analytic_ec_efficiency
        self.peer_timeout_s = peer_timeout_s
        self.rendezvous_timeout_s = rendezvous_timeout_s
        self.first_block_id = first_block_id
        self.time_scale = time_scale
        self.telemetry_interval_s = telemetry_interval_s
        self._first_block_gate = first_block_gate
        self.paused = False  # a local sink has no room: Alice sends no frame
        self.boot_nonce = secrets.token_hex(8)  # this incarnation of the local end(s)
        self.peer_reachable = True  # Alice's view of Bob; False after a failed rendezvous
        self._bob: BobModule | None = None
        self.physics = LinkPhysics.from_link(link)
        if not link.enabled:
            self.physics = self.physics.with_changes(cut=True)
        self.stats = LinkStats()
        self.reporter = LinkReporter(link, clock=clock, bus=bus, events=events,
                                     stats=self.stats, interval_s=telemetry_interval_s)
        self._sinks: dict[End, LinkKeySink | None] = {"alice": alice_sink, "bob": bob_sink}
        self._channels: list[ClassicalChannel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Subscription | None = None
        self._state: Literal["new", "running", "closed"] = "new"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the channels and start the local ends' loops.

        Raises:
            KeyplaneError: already started or closed.
        """
        if self._state != "new":
            raise KeyplaneError(f"link {self.link_id}: runner already {self._state}")
        self._state = "running"
        analytic = self.link.protocol == "analytic" or self.link.protocol.endswith("-analytic")
        if len(self.local_ends) == 2:
            ca, cb = InProcessChannel.pair(self.link_id)
            qa, qb = InProcessChannel.pair(self.link_id)
            ends: dict[End, tuple[ClassicalChannel, ClassicalChannel]] = {
                "alice": (ca, qa), "bob": (cb, qb)}
        else:
            assert self.bus is not None
            end = self.local_ends[0]
            c = await BusChannel.open(self.bus, self.link_id, end)
            q = await BusChannel.open(self.bus, self.link_id, end, quantum=True)
            ends = {end: (c, q)}
        for classical, quantum in ends.values():
            self._channels += [classical, quantum]
        if self.first_block_id is None:
            self.first_block_id = block_id_base(self.clock.wall())
        if "bob" in ends:
            classical, quantum = ends["bob"]
            if not analytic:
                self._bob = BobModule(self.link, classical, quantum, self._rng("bob"),
                                      cascade_schedule=self.cascade_schedule,
                                      peer_timeout_s=self.peer_timeout_s,
                                      offload=self.clock.offload)
            # answer Alice only now that both of Bob's inboxes are subscribed
            await classical.serve_peer(self.boot_nonce, self._on_peer_request)
            if self._bob is not None:
                self._start_task(self._bob_loop(self._bob))
            else:
                self._start_task(analytic_stream.analytic_bob(self, classical))
        if "alice" in ends:
            classical, quantum = ends["alice"]
            await classical.serve_peer(self.boot_nonce)
            if analytic:
                self._start_task(analytic_stream.analytic_alice(self, classical))
            else:
                alice = AliceModule(self.link, classical, quantum, self._rng("alice"),
                                    cascade_schedule=self.cascade_schedule,
                                    peer_timeout_s=self.peer_timeout_s,
                                    offload=self.clock.offload)
                alice.next_block_id = self.first_block_id
                self._start_task(self._alice_loop(alice))
            if self.bus is not None:
                self._sub = await self.bus.subscribe(control_topic(self.link_id),
                                                     self._on_command)
                self._start_task(self.reporter.loop(self._running, lambda: self.state))

    async def close(self) -> None:
        """Stop the loops, close the channels; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            # cancel again until done: on Python 3.11 asyncio.wait_for (inside nats-py's
            # request) can swallow a cancellation that races with the reply; the loops
            # also stop by themselves once they see the closed state
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        if self._sub is not None and self.bus is not None and self.reporter.measured:
            await self.reporter.publish(self.reporter.message(self.state))  # final counts
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for ch in self._channels:
            await ch.close()
        self._channels.clear()


    # ------------------------------------------------------------------ faults

    @property
    def state(self) -> LinkState:
        """``down`` if cut or the peer end is unreachable, ``degraded`` with extra loss,
        else ``up``."""
        if self.physics.cut or not self.peer_reachable:
            return LinkState.down
        if self.physics.extra_loss_db > 0:
            return LinkState.degraded
        return LinkState.up

    def _require_alice(self) -> None:
        if "alice" not in self.local_ends:
            raise KeyplaneError(
                f"link {self.link_id}: faults apply at Alice's end ({self.link.endpoints[0]}); "
                "send a LinkCommand over the bus instead")

    def cut(self) -> None:
        """Break the fibre: nothing reaches Bob's detectors but dark counts."""
        self._require_alice()
        self.physics = self.physics.with_changes(cut=True)
        self._state_changed("cut")

    def degrade(self, extra_loss_db: float) -> None:
        """Add ``extra_loss_db`` of loss (bends, a bad splice) on top of the fibre's.

        Raises:
            ValueError: negative loss.
        """
        if extra_loss_db < 0:
            raise ValueError("extra loss must be >= 0 dB")
        self._require_alice()
        self.physics = self.physics.with_changes(extra_loss_db=extra_loss_db)
        self._state_changed("degrade")

    def restore(self) -> None:
        """Repair the fibre: no cut, no extra loss (an eavesdropper stays)."""
        self._require_alice()
        self.physics = self.physics.with_changes(cut=False, extra_loss_db=0.0)
        self._state_changed("restore")

    def set_eavesdropper(self, eavesdropper: Eavesdropper | None) -> None:
        """Put an intercept-resend eavesdropper on the fibre (``None`` removes her).

        Raises:
            ValueError: her position is beyond the fibre's length.
        """
        self._require_alice()
        if eavesdropper is not None and eavesdropper.position_km > self.physics.length_km:
            raise ValueError("eavesdropper position beyond the fibre's length")
        if eavesdropper is not None and eavesdropper.fraction == 0.0:
            eavesdropper = None
        self.physics = self.physics.with_changes(eavesdropper=eavesdropper)
        self._state_changed("eve_on" if eavesdropper else "eve_off")

    def _state_changed(self, change: str, **data: Any) -> None:
        self.reporter.state_changed(change, self.state, self.physics.extra_loss_db, **data)

    async def _on_command(self, topic: str, msg: Message) -> Message | None:
        if not isinstance(msg, LinkCommand) or msg.link_id != self.link_id:
            return None
        ok, text = True, ""
        try:
            if msg.action == "cut":
                self.cut()
            elif msg.action == "degrade":
                self.degrade(msg.extra_loss_db)
            elif msg.action == "restore":
                self.restore()
            elif msg.action == "eve":
                self.set_eavesdropper(Eavesdropper(position_km=msg.position_km,
                                                   fraction=msg.fraction)
                                      if msg.fraction > 0 else None)
        except (ValueError, KeyplaneError) as exc:
            ok, text = False, str(exc)
        eve = self.physics.eavesdropper
        return LinkCommandReply(link_id=self.link_id, ok=ok, state=self.state.value,
                                message=text, extra_loss_db=self.physics.extra_loss_db,
                                eavesdropper_fraction=eve.fraction if eve else 0.0,
                                delivered_blocks=self.stats.delivered_blocks,
                                aborted_blocks=self.stats.aborted_blocks)

    # ------------------------------------------------------------------ loops

    def _rng(self, end: End) -> np.random.Generator:
        return np.random.default_rng(link_rng_seed(self.seed, self.link_id, end,
                                                   self.first_block_id or 0))

    def _start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("link %s: loop failed, this end stopped", self.link_id,
                         exc_info=task.exception())

    def _running(self) -> bool:
        """Loop condition: ``False`` once :meth:`close` began (even if a cancel was lost)."""
        return self._state == "running"

    def _frame(self) -> tuple[int, float]:
        n_pulses = max(1, round(self.link.repetition_rate_hz * self.frame_duration_s))
        return n_pulses, n_pulses / self.link.repetition_rate_hz

    def _next_frame_at(self, next_t: float, duration: float) -> float:
        """Clock time the next frame starts: one frame's time (scaled) after this one's, but
        no more than one frame in the past, so a link that fell behind never runs a burst
        of frames to catch up (hardware does not make up for lost time either)."""
        step = duration / self.time_scale
        return max(next_t + step, self.clock.now() - step)

    def _has_room(self) -> bool:
        return all(sink_has_room(self._sinks[end]) for end in self.local_ends)

    async def _room(self) -> bool:
        """Whether Alice may send a frame now; while a local sink is full it idles for one
        frame (on the clock) and says no."""
        if self._has_room():
            if self.paused:
                self.paused = False
                self._state_changed("store_room")
            return True
        if not self.paused:
            self.paused = True
            self._state_changed("store_full")
        await self.clock.sleep(self._frame()[1] / self.time_scale)
        return False

    async def _await_peer(self, classical: ClassicalChannel) -> str:
        """Bob's boot nonce once he answers; reports the link down while he does not."""
        while self._running():
            try:
                nonce = await classical.wait_peer(self.rendezvous_timeout_s, clock=self.clock,
                                                  ping_timeout_s=DEFAULT_PING_TIMEOUT_S)
            except ClassicalChannelTimeout:
                if classical.closed:
                    raise
                if self.peer_reachable:
                    self.peer_reachable = False
                    logger.warning("link %s: peer end %s unreachable for %g s", self.link_id,
                                   self.link.endpoints[1], self.rendezvous_timeout_s)
                    self._state_changed("peer_unreachable")
                continue
            if not self.peer_reachable:
                self.peer_reachable = True
                self._state_changed("peer_reachable")
            return nonce
        raise asyncio.CancelledError  # the runner is closing

    @staticmethod
    def _sync_reason(classical: ClassicalChannel, nonce: str, pending: str | None
                     ) -> str | None:
        """Why Alice must resynchronize before the next frame (``None``: no need)."""
        if classical.peer_nonce is not None and nonce != classical.peer_nonce:
            return "peer_restarted"
        if pending is not None:
            return pending
        if classical.discard_pending():
            return "stale_messages"  # Bob asked for a resync, or replies came too late
        return None

    async def _resync(self, do_sync: Callable[[str, str], Awaitable[None]], nonce: str,
                      reason: str) -> bool:
        """Run ``do_sync``; counts and reports it. Returns whether Bob acknowledged."""
        try:
            await do_sync(nonce, reason)
        except ClassicalChannelError as exc:
            self.stats.channel_errors += 1
            logger.warning("link %s: resync (%s) failed: %s", self.link_id, reason, exc)
            return False
        self.stats.resyncs += 1
        if reason == "start":
            logger.info("link %s: Bob synchronized", self.link_id)
        else:
            self._state_changed("resync", reason=reason)
        return True

    async def _alice_loop(self, alice: AliceModule) -> None:
        assert self.first_block_id is not None
        classical = alice.classical
        frame_id = self.first_block_id
        reason: str | None = "start"
        next_t = self.clock.now()

        async def do_sync(nonce: str, why: str) -> None:
            await alice.sync(frame_id, nonce, reason=why)

        async def on_block(outcome: BlockOutcome) -> None:
            await self._record(outcome)
            await self._deliver("alice", outcome)

        gate = self._first_block_gate
        held = False  # holding the first-block gate
        gated_frames = 0  # frames run while holding it
        try:
            while self._running():
                if not await self._room():
                    next_t = self.clock.now()
                    continue
                # one round trip per frame: never send a frame Bob cannot receive
                nonce = await self._await_peer(classical)
                reason = self._sync_reason(classical, nonce, reason)
                if reason is not None:
                    if not await self._resync(do_sync, nonce, reason):
                        await self.clock.sleep(self._frame()[1])
                        continue
                    reason = None
                    next_t = max(next_t, self.clock.now())  # no burst of frames after a wait
                if gate is not None and not held and (gated_frames == 0 or gate.locked()):
                    # first frame: take the gate; after the first block: let a link still
                    # making its first one go first (queue behind it, pass straight on)
                    await gate.acquire()
                    if gated_frames == 0:
                        held = True
                    else:
                        gate.release()
                    next_t = max(next_t, self.clock.now())  # the wait is not a lost frame
                n_pulses, duration = self._frame()
                try:
                    await alice.run_frame(frame_id, self.physics, n_pulses, duration, on_block)
                except ClassicalChannelError as exc:
                    self.stats.channel_errors += 1
                    logger.warning("link %s: frame %d lost: %s", self.link_id, frame_id, exc)
                    reason = "frame_lost"
                if held:
                    gated_frames += 1
                    if (self.stats.delivered_blocks + self.stats.aborted_blocks > 0
                            or gated_frames >= FIRST_BLOCK_GATE_FRAMES):
                        assert gate is not None
                        gate.release()
                        held = False
                frame_id += 1
                self.stats.frames += 1
                next_t = self._next_frame_at(next_t, duration)
                await self.clock.sleep_until(next_t)
        finally:
            if held:
                assert gate is not None
                gate.release()

    async def _bob_loop(self, bob: BobModule) -> None:
        async def on_block(outcome: BlockOutcome) -> None:
            await self._deliver("bob", outcome)

        while self._running():
            try:
                await bob.run_frame(on_block)
            except ClassicalChannelError as exc:
                if self._state == "closed":
                    return
                logger.warning("link %s: Bob lost a frame: %s", self.link_id, exc)

    async def _on_peer_request(self, msg: Message) -> Message | None:
        """Bob's end: apply Alice's :class:`Sync` (then acknowledge it)."""
        if not isinstance(msg, Sync) or msg.link_id != self.link_id:
            return None
        if self._bob is not None:
            done = self._bob.request_sync(msg)
            try:
                async with asyncio.timeout(DEFAULT_PING_TIMEOUT_S):
                    await done.wait()
            except TimeoutError:
                return None  # Alice times out and retries
        return SyncAck(link_id=self.link_id, boot_nonce=self.boot_nonce,
                       next_block_id=msg.next_block_id)

    async def _deliver(self, end: End, outcome: BlockOutcome) -> None:
        sink = self._sinks[end]
        if outcome.status == "delivered" and outcome.material is not None and sink is not None:
            await sink.put_block(self.link_id, outcome.block_id, outcome.material)

    async def _record(self, o: BlockOutcome) -> None:
        """Alice's end: counters, then the block's event and telemetry."""
        st = self.stats
        st.sifted_bits += o.sifted_bits
        st.leaked_ec_bits += o.leaked_ec_bits
        st.last_qber = o.qber
        if o.status == "delivered":
            st.delivered_blocks += 1
            st.delivered_bits += o.secret_bits
        else:
            st.aborted_blocks += 1
            if o.status == "aborted_qber":
                st.qber_aborts += 1
            elif o.status == "verify_failed":
                st.discarded_blocks += 1
        self.reporter.block(o, self.state)

    # ------------------------------------------------------------------ analytic mode

    def analytic_rate_bps(self) -> float:
        """Secret-key rate of the analytic mode for the current physics, faults included
        (:func:`~keyplane.physical.analytic.analytic_rate_bps`; 0 if the QBER aborts)."""
        pp = self.link.postprocessing
        measured = measured_physics(self.link, self.physics)
        if measured is not None:  # MDI-QKD, TF-QKD, BBM92: their own closed forms
            return measured.asymptotic_rate(self.analytic_ec_efficiency) \
                * self.link.repetition_rate_hz
        return analytic.analytic_rate_bps(self.physics, formula=pp.analytic_formula,
                                          ec_efficiency=self.analytic_ec_efficiency,
                                          qber_threshold=pp.qber_threshold)

    def analytic_material(self, block_id: int, n_bytes: int) -> bytes:
        """Analytic mode's block material (:func:`.analytic_stream.analytic_material`)."""
        return analytic_stream.analytic_material(self.seed, self.link_id, block_id, n_bytes)
