"""A link worker process: runs both ends of some links, away from the KMs' event loop.

Started by :class:`~keyplane.physical.pool.LinkWorkerPool` as
``python -m keyplane.physical.worker``; talks to its parent only over its stdin/stdout
(:mod:`~keyplane.physical.workerwire`). The first frame says which links to run; the worker
lowers its own CPU priority (``os.nice``) so a saturated twin slows key *production*, never
key delivery or control, then runs one :class:`~keyplane.physical.runner.LinkRunner` per
link: both ends in this process over in-process channels (embedded mode), or, in a node
process of a distributed network, only that node's ends, on the network's bus, which the
worker joins itself (``bus_url``) so the frames never pass through the KM's process. In a
process of several nodes (``link_nodes``) the worker joins once per node, with that node's
credentials, and a link between two of them runs both ends here over in-process channels.

What crosses the pipe, and why:

* each delivered block, to the parent, which stores it in the KM's link key store and
  acknowledges; the worker's end waits for that acknowledgement, so a slow store slows
  the link (back-pressure) and a block counts as delivered only once it is durable;
* ``room`` from the parent when a store fills or empties: the runner pauses while full;
* the runners' events and their (already rate-bounded) telemetry, which the parent puts on
  its own event stream and bus, and link commands (cut, degrade, eve) from the parent's bus,
  answered by the runner. Runners talk to a private in-memory bus here, so their code is
  the same as in-process.

Priority: the worker produces each local link end's *first* block at its parent's priority
and lowers its own (every thread's ``nice``) by ``nice`` as soon as each end delivered one,
or after ``nice_after_first_blocks_s`` at most (a link that cannot make a block, e.g. a cut
one). Before its first block a link has no key any KM could deliver, and the first key of a
network waits for exactly those blocks: at nice +10 on a machine oversubscribed 3x by
busy loops a worker got about a ninth of a busy loop's CPU and the demo's first relayed key
took 9.9 s (p50); see docs/benchmarks.md.

The worker exits when its parent says ``stop`` or when its stdin closes (the parent died),
so an orphaned worker never keeps producing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

from keyplane.bus import Bus, Message, connect, decode, encode
from keyplane.clock import RealClock
from keyplane.config import QuantumLink
from keyplane.errors import KeyplaneError, PhysicalError
from keyplane.events import Event, EventStream
from keyplane.physical.runner import LinkRunner
from keyplane.physical.wire import control_topic
from keyplane.physical.workerwire import (
    Ack,
    BlockOut,
    Command,
    CommandReply,
    EventOut,
    Ready,
    Room,
    StartWorker,
    Stop,
    Stopped,
    encode_frame,
    read_frame,
    telemetry_frame,
)

__all__ = ["main"]

logger = logging.getLogger(__name__)

End = Literal["alice", "bob"]


class _Pipe:
    """The worker's side of the pipe: writes frames, matches acknowledgements."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._seq = itertools.count(1)
        self._acks: dict[int, asyncio.Future[str | None]] = {}
        self._telemetry: list[tuple[str, bytes]] = []

    async def send(self, header: Any, payload: bytes = b"") -> None:
        self._writer.write(encode_frame(header, payload))
        await self._writer.drain()

    def send_nowait(self, header: Any) -> None:
        self._writer.write(encode_frame(header))

    def telemetry(self, topic: str, envelope: bytes) -> None:
        """Queue a telemetry envelope; the turn's envelopes go out as one frame (at 1,000
        links one frame per message cost the parent a quarter of its CPU)."""
        self._telemetry.append((topic, envelope))
        if len(self._telemetry) == 1:
            asyncio.get_running_loop().call_soon(self._flush_telemetry)

    def _flush_telemetry(self) -> None:
        items, self._telemetry = self._telemetry, []
        if items and not self._writer.is_closing():
            self._writer.write(telemetry_frame(items))

    async def block(self, link_id: str, end: End, block_id: int, material: bytes) -> None:
        seq = next(self._seq)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = fut
        try:
            await self.send(BlockOut(seq=seq, link_id=link_id, end=end, block_id=block_id),
                            material)
            error = await fut
        finally:
            self._acks.pop(seq, None)
        if error is not None:
            raise PhysicalError(f"link {link_id}: the key manager refused block {block_id}: "
                                f"{error}")

    def acked(self, ack: Ack) -> None:
        fut = self._acks.get(ack.seq)
        if fut is not None and not fut.done():
            fut.set_result(ack.error)

    def fail_all(self) -> None:
        for fut in self._acks.values():
            if not fut.done():
                fut.cancel()


def lower_priority(increment: int) -> int:
    """Raise the nice value of every thread of this process by ``increment`` (at most 19);
    returns the new value.

    On Linux ``os.nice`` changes the calling thread only, and the threads that run the
    emulation's numpy work (:meth:`~keyplane.clock.Clock.offload`) already exist when this
    runs, so each thread of ``/proc/self/task`` is set; threads created later inherit it.
    """
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):  # elsewhere the nice value is the process's
        with contextlib.suppress(OSError):
            os.nice(increment)
        return target
    for tid in os.listdir(tasks):
        with contextlib.suppress(OSError):  # a thread that just ended, or not permitted
            os.setpriority(os.PRIO_PROCESS, int(tid), target)
    return target


class _Priority:
    """Lowers the worker's priority once every local link end delivered a block (module
    docstring), or after ``bound_s`` seconds, whichever comes first."""

    def __init__(self, increment: int, ends: set[tuple[str, End]], bound_s: float) -> None:
        self._increment = increment
        self._waiting = set(ends)
        self._timer: asyncio.TimerHandle | None = None
        self.lowered = False
        if not increment:
            self.lowered = True
        elif bound_s <= 0 or not self._waiting:
            self.lower()
        else:
            self._timer = asyncio.get_running_loop().call_later(bound_s, self.lower)

    def delivered(self, link_id: str, end: End) -> None:
        """``end`` of ``link_id`` delivered a block."""
        if not self.lowered:
            self._waiting.discard((link_id, end))
            if not self._waiting:
                self.lower()

    def lower(self) -> None:
        """Lower the priority now (idempotent)."""
        if self.lowered:
            return
        self.lowered = True
        if self._timer is not None:
            self._timer.cancel()
        nice = lower_priority(self._increment)
        logger.info("link worker %d: now at nice %d (%s)", os.getpid(), nice,
                    "first blocks delivered" if not self._waiting else "bound reached")

    def cancel(self) -> None:
        """Drop the bound's timer (the worker is stopping)."""
        if self._timer is not None:
            self._timer.cancel()


class _PipeSink:
    """One end of one link: blocks go to the parent; room as the parent last said."""

    def __init__(self, pipe: _Pipe, end: End,
                 on_delivered: Callable[[str, End], None] | None = None) -> None:
        self._pipe = pipe
        self._end = end
        self._on_delivered = on_delivered
        self.room = True

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        await self._pipe.block(link_id, self._end, block_id, material)
        if self._on_delivered is not None:
            self._on_delivered(link_id, self._end)

    def has_room(self) -> bool:
        return self.room


class _EventPipe:
    """An event sink that forwards every event to the parent."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    def write(self, event: Event) -> None:
        self._pipe.send_nowait(EventOut(type=event.type.value, element=event.element,
                                        node=event.node, session=event.session,
                                        data=dict(event.data)))

    def close(self) -> None:
        """Nothing to release (the pipe belongs to the worker)."""


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    first = await read_frame(reader)
    if first is None or isinstance(first[0], Stop):
        return  # launched ahead, then not needed (the runtime failed to start)
    if not isinstance(first[0], StartWorker):
        raise PhysicalError("link worker: the first frame must be 'start'")
    spec = first[0]
    pipe = _Pipe(writer)
    clock = RealClock()

    async def join(credentials: dict[str, Any] | None) -> Bus:
        # only a node's worker on NATS needs credentials (cryptography's X.509): imported here
        from keyplane.bus.security import BusCredentials, BusSecurity

        security: BusSecurity | None = None
        if credentials is not None:
            security = BusSecurity.load(BusCredentials.model_validate(credentials))
        elif spec.bus_insecure:
            security = BusSecurity.danger_insecure("the node's link worker")
        return await connect(spec.bus_url, name=f"keyplane-link-worker-{os.getpid()}",
                             security=security)

    # a process of several nodes: one connection per node, each with that node's identity
    # (nats-server grants each only its own links' topics); else the one identity
    node_buses = {node: await join(spec.node_credentials.get(node))
                  for node in sorted(set(spec.link_nodes.values()))}
    bus: Bus = await join(spec.bus_credentials) if not node_buses else next(
        iter(node_buses.values()))

    def bus_of(link_id: str) -> Bus:
        node = spec.link_nodes.get(link_id)
        return node_buses[node] if node is not None else bus

    events = EventStream(clock, [_EventPipe(pipe)])
    sinks: dict[tuple[str, End], _PipeSink] = {}
    runners: dict[str, LinkRunner] = {}

    async def on_telemetry(topic: str, msg: Message) -> None:
        pipe.telemetry(topic, encode(msg))

    if spec.bus_url is None:  # a private bus: the parent publishes the telemetry
        await bus.subscribe("keyplane.telemetry.link.>", on_telemetry)
    links = [QuantumLink.model_validate(raw) for raw in spec.links]
    local_ends: dict[str, tuple[End, ...]] = {
        link.link_id: tuple(spec.ends.get(link.link_id, ("alice", "bob"))) for link in links}
    priority = _Priority(spec.nice, {(lid, end) for lid, ends in local_ends.items()
                                     for end in ends}, spec.nice_after_first_blocks_s)
    # first blocks one link at a time (LinkRunner): the first key waits for some link's
    # first block, not for all of this worker's links to finish theirs together
    first_blocks = asyncio.Lock()
    for link in links:
        local = local_ends[link.link_id]
        ends: dict[End, _PipeSink] = {end: _PipeSink(pipe, end, priority.delivered)
                                      for end in local}
        for end, sink in ends.items():
            sinks[(link.link_id, end)] = sink
        runners[link.link_id] = LinkRunner(
            link, clock=clock, seed=spec.seed, alice_sink=ends.get("alice"),
            bob_sink=ends.get("bob"), bus=bus_of(link.link_id), events=events,
            local_ends=local,
            frame_duration_s=spec.frame_duration_s, time_scale=spec.time_scale,
            telemetry_interval_s=spec.telemetry_interval_s, first_block_gate=first_blocks)
    commands: set[asyncio.Task[None]] = set()

    async def command(cmd: Command) -> None:
        try:
            reply = await bus_of(cmd.link_id).request(
                control_topic(cmd.link_id), decode(cmd.message.encode()),
                timeout_s=spec.command_timeout_s)
            await pipe.send(CommandReply(req=cmd.req, message=encode(reply).decode()))
        except KeyplaneError as exc:
            await pipe.send(CommandReply(req=cmd.req, error=str(exc)))

    try:
        for r in runners.values():
            await r.start()
        await pipe.send(Ready(pid=os.getpid()))
        while True:
            got = await read_frame(reader)
            if got is None:
                logger.warning("link worker %d: parent gone, stopping", os.getpid())
                break
            frame = got[0]
            if isinstance(frame, Ack):
                pipe.acked(frame)
            elif isinstance(frame, Room):
                target = sinks.get((frame.link_id, frame.end))
                if target is not None:
                    target.room = frame.room
            elif isinstance(frame, Command):
                task = asyncio.get_running_loop().create_task(command(frame))
                commands.add(task)
                task.add_done_callback(commands.discard)
            elif isinstance(frame, Stop):
                break
    finally:
        priority.cancel()
        pipe.fail_all()
        for task in commands:
            task.cancel()
        for r in runners.values():
            await r.close()
        for b in {bus, *node_buses.values()}:
            await b.close()
    with contextlib.suppress(ConnectionError):
        await pipe.send(Stopped())


class _DetachedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (the emulation's numpy work), which shutdown does not
    wait for: see :func:`main`."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


async def _main() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(_DetachedExecutor(thread_name_prefix="keyplane-link"))
    # the pipe to the parent is the original stdout; anything printed goes to stderr instead
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0))
    # drain() waits until every frame is in the pipe, so the last (``stopped``) is out
    # before the process exits
    transport.set_write_buffer_limits(high=0)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        await _serve(reader, writer)
    finally:
        transport.close()


def main() -> None:
    """Entry point of ``python -m keyplane.physical.worker``."""
    logging.basicConfig(level=os.environ.get("KEYPLANE_WORKER_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s worker %(process)d %(name)s: "
                               "%(message)s", stream=sys.stderr)
    code = 0
    try:
        asyncio.run(_main())
    except (KeyboardInterrupt, BrokenPipeError, ConnectionError):
        pass
    except BaseException:
        logger.exception("link worker %d failed", os.getpid())
        code = 1
    # Exit now, not after the interpreter joined the executor's threads: one may be inside
    # a numpy call of a block nobody waits for any more, at the worker's low priority
    # (seconds on a busy machine, past the parent's stop bound).
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
