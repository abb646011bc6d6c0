"""Emulated links in worker processes: the KM process's side (:class:`LinkWorkerPool`).

Why: emulating a BB84 link is CPU-heavy (photon frames, sifting, Cascade, privacy
amplification). On the KMs' event loop it delayed key delivery and control answers by
seconds on a busy machine. Here each link runs in a worker process
(:mod:`keyplane.physical.worker`) at a lower OS priority, and this process only stores
the blocks, forwards events and telemetry, and relays link commands.

How links are shared out (:func:`plan_workers`): a BB84 link costs a CPU-bound share and
about 9 MB; an analytic link costs almost nothing (one hash per block). So the pool has as
many workers as cores (``EmulationSettings.workers`` to override), at most one per BB84
link, and at least one; links go to the least loaded worker by weight. 1,000 analytic links
fit in one worker, 25 BB84 links spread over the cores.

To the rest of the process the pool looks like :class:`~keyplane.physical.PhysicalNetwork`
with both ends local: blocks arrive in the same sinks (the KMs' link key stores), events on
the same stream, telemetry and link commands (``keyplane.control.link.<link>``) on the same
bus. A sink's ``has_room()`` turning False pauses the link in its worker (checked after each
block and every ``room_check_interval_s``). The links start as soon as the workers are launched
(:meth:`LinkWorkerPool.prepare`), so their first blocks are computed while the KMs start;
a block that comes before :meth:`LinkWorkerPool.start` waits there (the worker's end waits
for its acknowledgement) and is stored once the KMs take blocks. A worker that dies is
restarted (its links get fresh block ids from the wall clock, as after any restart), with a
back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import sys
from collections.abc import Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import keyplane
from keyplane.bus import (
    Bus,
    BusSecurity,
    Message,
    Subscription,
    decode,
    encode,
    unsubscribe_all,
)
from keyplane.bus.settings import settings_from_env
from keyplane.clock import Clock
from keyplane.config import QuantumLink, Topology
from keyplane.errors import KeyplaneError, PhysicalError
from keyplane.events import EventStream
from keyplane.lifecycle import Service
from keyplane.physical.reporting import DEFAULT_TELEMETRY_INTERVAL_S
from keyplane.physical.sink import LinkKeySink, sink_has_room
from keyplane.physical.wire import LinkCommandReply, control_topic
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
    TelemetryOut,
    encode_frame,
    read_frame,
    split_telemetry,
)
from keyplane.progress import NoProgress, process_cpu_s, wait_progressing

__all__ = ["EMULATION_ENV_PREFIX", "EmulationSettings", "LinkWorkerPool",
           "emulation_settings_from_env", "plan_workers"]

logger = logging.getLogger(__name__)

End = Literal["alice", "bob"]
PositiveS = Annotated[float, Field(gt=0.0)]

_SRC = str(Path(keyplane.__file__).resolve().parents[1])
"""Where this keyplane is imported from: the workers import the same code."""
BB84_WEIGHT = 1.0
ANALYTIC_WEIGHT = 0.01


class EmulationSettings(BaseModel):
    """How a process runs its emulated links (``RuntimeContext.emulation``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["workers", "inprocess"] = "workers"
    """``workers``: in worker processes (:class:`LinkWorkerPool`); ``inprocess``: on this
    process's event loop (tests on a virtual clock, tools)."""
    workers: Annotated[int, Field(ge=1)] | None = None
    """Worker processes; None: one per core, at most one per BB84 link, at least one."""
    nice: Annotated[int, Field(ge=0, le=19)] = 10
    """How much lower than this process the workers run (``os.nice`` increment), once their
    links delivered their first blocks (``nice_after_first_blocks_s``)."""
    nice_after_first_blocks_s: Annotated[float, Field(ge=0.0)] = 60.0
    """A worker runs at this process's priority until each of its link ends delivered a
    block, for at most this many seconds, then ``nice`` lower (0: lower at once). Before
    its first block a link has no key to deliver, and the network's first keys wait for
    those blocks (see :mod:`keyplane.physical.worker`)."""
    time_scale: PositiveS = 1.0
    """Emulated seconds per real second (1: hardware pace; > 1 for fast tests)."""
    telemetry_interval_s: PositiveS = DEFAULT_TELEMETRY_INTERVAL_S
    """At most one LinkTelemetry per link per this many seconds."""
    start_timeout_s: PositiveS = 120.0
    """A worker's start (interpreter, imports, bus, its links) fails once it has used no
    CPU for this long (stuck, not slow: a busy machine slows a start, it does not stop it)."""
    start_timeout_cap_s: PositiveS = 1200.0
    """The cap on a worker's start however it progresses."""
    stop_timeout_s: PositiveS = 10.0
    """Bound on a worker's orderly exit before it is killed."""
    command_timeout_s: PositiveS = 10.0
    """Bound on a link command's answer from a worker."""
    room_check_interval_s: PositiveS = 0.5
    """How often a paused link's stores are checked for room again."""
    restart_backoff_max_s: PositiveS = 30.0
    """Longest wait before restarting a worker that died (doubling from 0.5 s)."""


EMULATION_ENV_PREFIX = "KEYPLANE_EMULATION_"


def emulation_settings_from_env(environ: Mapping[str, str] | None = None, **explicit: Any
                                ) -> EmulationSettings:
    """:class:`EmulationSettings` from ``KEYPLANE_EMULATION_<FIELD>`` variables (e.g.
    ``KEYPLANE_EMULATION_NICE=0``), so an operator or a test harness sets how a process runs
    its link workers without code changes (see :func:`keyplane.bus.settings_from_env`)."""
    result: EmulationSettings = settings_from_env(EmulationSettings, EMULATION_ENV_PREFIX,
                                                  environ, **explicit)
    return result


def _weight(link: QuantumLink) -> float:
    return ANALYTIC_WEIGHT if _analytic(link) else BB84_WEIGHT


def _analytic(link: QuantumLink) -> bool:
    return link.protocol == "analytic" or link.protocol.endswith("-analytic")


def plan_workers(links: list[QuantumLink], workers: int | None = None,
                 cores: int | None = None) -> list[list[QuantumLink]]:
    """Share ``links`` out to worker processes, heaviest first to the least loaded.

    Returns:
        One list of links per worker (no empty list; none at all without links).
    """
    if not links:
        return []
    bb84 = sum(1 for link in links if not _analytic(link))
    n = workers or max(1, min(cores or os.cpu_count() or 1, bb84))
    n = min(n, len(links))
    plan: list[list[QuantumLink]] = [[] for _ in range(n)]
    load = [0.0] * n
    for link in sorted(links, key=lambda x: (-_weight(x), x.link_id)):
        i = min(range(n), key=lambda k: (load[k], k))
        plan[i].append(link)
        load[i] += _weight(link)
    return [p for p in plan if p]


@dataclass
class _Worker:
    """One worker process and what it runs."""

    index: int
    links: list[QuantumLink]
    proc: asyncio.subprocess.Process | None = None
    reader_task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    replies: dict[int, asyncio.Future[CommandReply]] = field(default_factory=dict)
    restarts: int = 0

    def send(self, header: object, payload: bytes = b"") -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            raise PhysicalError(f"link worker {self.index} is not running")
        proc.stdin.write(encode_frame(header, payload))  # type: ignore[arg-type]


class LinkWorkerPool(Service):
    """Both ends of ``topology``'s emulated links, in worker processes (module docstring).

    Args:
        topology: the network.
        clock: the KM process's clock (room checks, restart back-off).
        sinks: ``(node id, link id) -> sink`` for both ends of every link run here.
        seed: run seed (each link's generators derive from it).
        bus: telemetry out, link commands in (``keyplane.control.link.<link>``).
        events: the event stream the workers' events are re-emitted on.
        settings: :class:`EmulationSettings`.
        link_ids: run only these links (default: every link of the topology).
        node: run only this node's ends of its links (distributed mode; the neighbours'
            processes run the other ends); None: both ends of every link.
        nodes: instead of ``node``, the several nodes of one process (``keyplane node
            --id a,b``): their ends of their links; a link between two of them runs both
            ends in one worker, over in-process channels, as in embedded mode.
        bus_url: with ``node`` or ``nodes``: the network's bus, which the workers join
            themselves (channels, telemetry and link commands go there, not through this
            process).
        bus_security: with ``bus_url`` and ``node``: the node's bus identity; the workers
            load the same credentials from its files (None: the in-memory or explicitly
            insecure bus).
        bus_securities: with ``bus_url`` and ``nodes``: each node's bus identity; a worker
            joins the bus once per node whose links it runs, as that node (a link's
            runner as the owner of its local Alice end, else of its Bob end).

    Raises:
        ConfigError: a local link end has no sink, or ``node``/``nodes`` without
            ``bus_url``.
    """

    def __init__(self, topology: Topology, *, clock: Clock,
                 sinks: Mapping[tuple[str, str], LinkKeySink], seed: int = 0,
                 bus: Bus | None = None, events: EventStream | None = None,
                 settings: EmulationSettings | None = None,
                 link_ids: Collection[str] | None = None, node: str | None = None,
                 bus_url: str | None = None, bus_security: BusSecurity | None = None,
                 nodes: Collection[str] | None = None,
                 bus_securities: Mapping[str, BusSecurity | None] | None = None) -> None:
        from keyplane.errors import ConfigError

        local = set(nodes) if nodes is not None else {node} if node is not None else None
        if local is not None and bus_url is None:
            raise ConfigError("link workers of a node process need the network's bus URL")
        self.node = node
        self.nodes = None if nodes is None else frozenset(nodes)
        self.bus_url = bus_url if local is not None else None
        self.bus_security = bus_security
        self.bus_securities = dict(bus_securities or {})
        self.topology = topology
        self.clock = clock
        self.bus = bus
        self.events = events
        self.seed = seed
        self.settings = settings or EmulationSettings()
        chosen = [link for link in topology.links
                  if (link_ids is None or link.link_id in set(link_ids))
                  and (local is None or local.intersection(link.endpoints))]
        self._sinks: dict[tuple[str, End], LinkKeySink] = {}
        self._ends: dict[str, list[End]] = {}
        self._link_node: dict[str, str] = {}  # with ``nodes``: whose identity runs the link
        roles: tuple[End, End] = ("alice", "bob")
        for link in chosen:
            for end, owner in zip(roles, link.endpoints, strict=True):
                if local is not None and owner not in local:
                    continue
                if self.nodes is not None:
                    self._link_node.setdefault(link.link_id, owner)
                sink = sinks.get((owner, link.link_id))
                if sink is None:
                    raise ConfigError(f"no key sink for node {owner!r} on link {link.link_id!r}")
                self._sinks[(link.link_id, end)] = sink
                self._ends.setdefault(link.link_id, []).append(end)
        self.links = {link.link_id: link for link in chosen}
        self.workers = [_Worker(i, links) for i, links in enumerate(plan_workers(
            chosen, self.settings.workers))]
        self._by_link = {link.link_id: w for w in self.workers for link in w.links}
        self._room: dict[tuple[str, End], bool] = dict.fromkeys(self._sinks, True)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._req = itertools.count(1)
        self._state: Literal["new", "running", "closed"] = "new"
        self._open = asyncio.Event()  # set by start(): the sinks take blocks
        self.blocks_stored = 0
        self._telemetry: dict[str, bytes] = {}  # topic -> envelope not yet published
        self._publisher: asyncio.Task[None] | None = None
        self.telemetry_superseded = 0

    def __repr__(self) -> str:
        return f"LinkWorkerPool(links={len(self.links)}, workers={len(self.workers)})"

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.proc.pid for w in self.workers if w.proc is not None]

    # ------------------------------------------------------------------ lifecycle

    async def prepare(self) -> None:
        """Launch the worker processes and start their links now (interpreter, imports and
        the first blocks take seconds on a busy machine): a runtime calls this first and
        :meth:`start` once the KMs can take blocks, so the two overlap. Blocks that come
        before :meth:`start` wait for it. Idempotent."""
        if self._state != "new":
            return
        for w in self.workers:
            if w.proc is None:
                await self._launch(w)
                self._send_start(w)

    async def start(self) -> None:
        """Let blocks into the sinks, start every worker (launched by :meth:`prepare`, or
        now) and wait (``start_timeout_s``) until each runs its links.

        Raises:
            PhysicalError: a worker did not start in time or exited during start.
        """
        if self._state != "new":
            return
        try:
            await self.prepare()
        except BaseException:
            await self.close()
            raise
        self._state = "running"
        self._open.set()
        self._queue_telemetry([])  # what came before start: each topic's latest
        try:
            await asyncio.gather(*(self._await_ready(w) for w in self.workers))
            if self.bus is not None and self.bus_url is None:  # else the workers answer
                for lid in self.links:
                    self._subs.append(await self.bus.subscribe(
                        control_topic(lid), functools.partial(self._on_command, lid)))
        except BaseException:
            await self.close()
            raise
        self._start_task(self._room_loop())
        logger.info("%d emulated links in %d worker processes (pids %s)", len(self.links),
                    len(self.workers), self.pids)

    async def _launch(self, w: _Worker) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_SRC, *filter(None, [env.get("PYTHONPATH")])])
        w.ready.clear()
        w.stopped.clear()
        w.proc = await asyncio.create_subprocess_exec(
            # imported with the collector paused (keyplane.heap): 10 % of a worker's start
            sys.executable, "-m", "keyplane.heap", "keyplane.physical.worker:main",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=2**20)
        w.reader_task = asyncio.get_running_loop().create_task(self._read(w))

    async def _spawn(self, w: _Worker) -> None:
        await self._launch(w)
        self._send_start(w)
        await self._await_ready(w)

    def _credentials(self, sec: BusSecurity | None) -> dict[str, Any] | None:
        if self.bus_url is None or sec is None or sec.credentials is None:
            return None
        return sec.credentials.model_dump(mode="json")

    def _insecure(self) -> bool:
        secs = ([self.bus_security] if self.nodes is None
                else [self.bus_securities.get(n) for n in self.nodes])
        return any(sec is not None and not sec.secure for sec in secs)

    def _send_start(self, w: _Worker) -> None:
        s = self.settings
        w.send(StartWorker(links=[link.model_dump(mode="json") for link in w.links],
                           seed=self.seed, time_scale=s.time_scale,
                           telemetry_interval_s=s.telemetry_interval_s, nice=s.nice,
                           nice_after_first_blocks_s=s.nice_after_first_blocks_s,
                           ends={link.link_id: self._ends[link.link_id] for link in w.links},
                           bus_url=self.bus_url, command_timeout_s=s.command_timeout_s,
                           bus_credentials=self._credentials(self.bus_security),
                           bus_insecure=self._insecure(),
                           link_nodes={link.link_id: self._link_node[link.link_id]
                                       for link in w.links if link.link_id in self._link_node},
                           node_credentials={
                               n: c for n in sorted(self.nodes or ())
                               if (c := self._credentials(self.bus_securities.get(n)))
                               is not None}))
        for link in w.links:  # a restarted worker learns which stores are full
            for end in self._ends[link.link_id]:
                if not self._room[(link.link_id, end)]:
                    w.send(Room(link_id=link.link_id, end=end, room=False))

    async def _await_ready(self, w: _Worker) -> None:
        assert w.reader_task is not None and w.proc is not None
        s = self.settings
        ready = asyncio.get_running_loop().create_task(w.ready.wait())
        reader = w.reader_task
        why = ""
        try:
            await wait_progressing(
                asyncio.wait({ready, reader}, return_when=asyncio.FIRST_COMPLETED),
                [process_cpu_s(w.proc.pid)], stall_s=s.start_timeout_s,
                cap_s=s.start_timeout_cap_s, what=f"link worker {w.index} start")
        except NoProgress as exc:
            why = f": {exc}"
        finally:
            ready.cancel()
        if not w.ready.is_set():
            raise PhysicalError(f"link worker {w.index} ({len(w.links)} links) did not "
                                f"start{why or ' (it exited)'}")

    async def close(self) -> None:
        """Stop every worker (orderly, then killed after ``stop_timeout_s``); idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        await unsubscribe_all(self._subs)
        self._subs.clear()
        # workers first: blocks already in flight are stored and acknowledged meanwhile
        await asyncio.gather(*(self._stop(w) for w in self.workers))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop(self, w: _Worker) -> None:
        proc = w.proc
        if proc is None:
            return
        with contextlib.suppress(PhysicalError, ConnectionError):
            w.send(Stop())
        try:
            async with asyncio.timeout(self.settings.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            logger.warning("link worker %d (pid %d) did not stop; killing it", w.index, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if w.reader_task is not None:
            w.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w.reader_task
        for fut in w.replies.values():
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ from the workers

    async def _read(self, w: _Worker) -> None:
        proc = w.proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                got = await read_frame(proc.stdout)
                if got is None:
                    break
                frame, payload = got
                if isinstance(frame, BlockOut):
                    self._start_task(self._store(w, frame, payload))
                elif isinstance(frame, EventOut):
                    if self.events is not None:
                        self.events.emit(frame.type, frame.element, node=frame.node,
                                         session=frame.session, **frame.data)
                elif isinstance(frame, TelemetryOut):
                    if self.bus is not None:
                        self._queue_telemetry(split_telemetry(frame, payload))
                elif isinstance(frame, CommandReply):
                    fut = w.replies.pop(frame.req, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
                elif isinstance(frame, Ready):
                    w.ready.set()
                elif isinstance(frame, Stopped):
                    w.stopped.set()
        except (asyncio.IncompleteReadError, ValueError, ConnectionError) as exc:
            logger.error("link worker %d: broken pipe: %s", w.index, exc)
        code = await proc.wait()
        if self._state == "running" and not w.stopped.is_set():
            logger.error("link worker %d (pid %d, links %s) exited with %s; restarting it",
                         w.index, proc.pid, [link.link_id for link in w.links], code)
            self._start_task(self._restart(w))

    async def _restart(self, w: _Worker) -> None:
        w.restarts += 1
        await self.clock.sleep(min(self.settings.restart_backoff_max_s,
                                   0.5 * 2 ** min(w.restarts - 1, 10)))
        if self._state != "running":
            return
        try:
            await self._spawn(w)
        except PhysicalError as exc:
            logger.error("%s", exc)
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()

    async def _store(self, w: _Worker, frame: BlockOut, material: bytes) -> None:
        key = (frame.link_id, frame.end)
        sink = self._sinks.get(key)
        error: str | None = None
        await self._open.wait()  # a first block computed while the KMs started
        if sink is None:
            error = f"no sink for {frame.end} of link {frame.link_id}"
        else:
            try:
                await sink.put_block(frame.link_id, frame.block_id, material)
                self.blocks_stored += 1
            except KeyplaneError as exc:
                error = str(exc)
        with contextlib.suppress(PhysicalError, ConnectionError):
            w.send(Ack(seq=frame.seq, error=error))
            if sink is not None:
                self._check_room(w, key, sink)

    def _check_room(self, w: _Worker, key: tuple[str, End], sink: LinkKeySink) -> None:
        room = sink_has_room(sink)
        if room != self._room[key]:
            self._room[key] = room
            w.send(Room(link_id=key[0], end=key[1], room=room))

    async def _room_loop(self) -> None:
        """Tell workers when a full store has room again (consumption is not signalled)."""
        while True:
            await self.clock.sleep(self.settings.room_check_interval_s)
            for key, room in list(self._room.items()):
                if not room:
                    with contextlib.suppress(PhysicalError, ConnectionError):
                        self._check_room(self._by_link[key[0]], key, self._sinks[key])

    def _queue_telemetry(self, items: list[tuple[str, bytes]]) -> None:
        """Queue telemetry envelopes for one publishing task, the latest per topic.

        Each is a link end's figures for its last interval. Until :meth:`start` (Monitoring
        subscribes while the runtime starts) only each topic's latest is kept: 1,000 nodes
        take minutes to start, and a task per message held minutes of telemetry (about 3,900
        a second; GBs) and published it all at once. Later a message replaces an unpublished
        one of its topic only when this process is a whole interval behind (counted in
        ``telemetry_superseded``)."""
        queued = self._telemetry
        before = len(queued)
        for topic, envelope in items:
            queued[topic] = envelope
        if self._open.is_set():
            self.telemetry_superseded += before + len(items) - len(queued)
        if queued and self._publisher is None and self._open.is_set():
            self._publisher = asyncio.get_running_loop().create_task(self._publish())
            self._tasks.add(self._publisher)
            self._publisher.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        assert self.bus is not None
        try:
            while self._telemetry:
                batch, self._telemetry = self._telemetry, {}
                for topic, envelope in batch.items():
                    try:
                        await self.bus.publish_encoded(topic, envelope)
                    except KeyplaneError:
                        logger.debug("telemetry publish failed", exc_info=True)
                await asyncio.sleep(0)  # the frames read meanwhile join the next batch
        finally:
            self._publisher = None

    # ------------------------------------------------------------------ link commands

    async def _on_command(self, link_id: str, topic: str, msg: Message) -> Message | None:
        w = self._by_link.get(link_id)
        if w is None:
            return None
        req = next(self._req)
        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        w.replies[req] = fut
        try:
            w.send(Command(req=req, link_id=link_id, message=encode(msg).decode()))
            async with asyncio.timeout(self.settings.command_timeout_s):
                reply = await fut
        except (PhysicalError, TimeoutError) as exc:
            return LinkCommandReply(link_id=link_id, ok=False, state="down",
                                    message=f"link worker did not answer: {exc}")
        finally:
            w.replies.pop(req, None)
        if reply.message is None:
            return LinkCommandReply(link_id=link_id, ok=False, state="down",
                                    message=reply.error or "no reply")
        return decode(reply.message.encode())

    def _start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
