"""The fault matrix's traffic (:mod:`keyplane.faultmatrix`): the applications' loops and
what they obtained.

* ETSI 014 pairs: ``pairs_014`` loops, each a master SAE asking its KM for ``batch`` keys
  per request (``enc_keys``) and handing each batch's key_IDs to the slave SAE, which
  fetches them at its KM (``dec_keys``), retrying while the KM answers 503 or cannot be
  reached; with keyplane's acknowledgement (``keyplane_ack``, docs/api/etsi014.md) an
  attempt whose answer was lost is retried with the same key_IDs and gets the same keys,
  confirmed on a later fetch. The loops run at once, so that thousands of relayed keys
  flow in the time the faults take;
* one ETSI 004 stream: both SAEs open it and fetch index after index (``GET_KEY``), each at
  its own pace, retrying while the KM has no key yet or cannot be reached; a stream the KM
  no longer knows is opened again under a new Key_stream_ID.

Every key each application obtained is recorded (:class:`Ledger`) with the time it arrived:
a key is *complete* once both ends hold it with the same bytes.

The harness can :meth:`Traffic.pause` the requests that spend link key (``enc_keys`` and
``GET_KEY``; the slave's ``dec_keys`` of keys already relayed go on) and
:meth:`Traffic.resume` them: before each fault it lets the links build a stock, so that a
fault finds key to resume with (:func:`keyplane.faultmatrix.stock_links`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from keyplane.api.client import (
    ApiError,
    AsyncEtsi004Client,
    AsyncEtsi014Client,
    ClientError,
    Etsi004StatusError,
    QosParameters,
    TransportError,
)
from keyplane.cluster import LocalCluster

__all__ = ["GONE", "Ledger", "MatrixSettings", "Traffic"]

logger = logging.getLogger("keyplane.faultmatrix")

PositiveS = Annotated[float, Field(gt=0)]


GONE = (3, 4)
"""ETSI 004 GET_KEY statuses that say the stream is gone at the KM (V2.1.1: 3 peer not
connected, the stream ended; 4 no such stream): the traffic opens a new one."""


class MatrixSettings(BaseModel):
    """Pace and bounds of a fault-matrix run (real seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resume_bound_s: PositiveS = 10.0
    """Delivery must resume within this of each fault's end (issue #14's target)."""
    resume_timeout_s: PositiveS = 240.0
    """How long to wait for delivery to resume before reporting it never did."""
    flowing_keys: Annotated[int, Field(ge=1)] = 3
    """Before a fault: keys completed at both ends since the previous fault's recovery."""
    keys_014: Annotated[int, Field(ge=0)] = 2000
    """ETSI 014 keys the run completes at both ends (issue #14: "while 2,000 relayed keys
    flow"), spread evenly over the intervals before, between and after the faults: each
    fault waits for its share to flow first, and the traffic stops only once all have."""
    flowing_timeout_s: PositiveS = 300.0
    """How long to wait for that."""
    stock_bytes: Annotated[int, Field(ge=0)] = 10_240
    """Before each fault the requests that spend link key pause until every link has made
    this many bytes per direction since (0: no pause). A fault then finds key to resume
    with: without it the traffic, which asks faster than the links make key, leaves the
    stores empty, and "resumed" would time the link's next block rather than the network's
    recovery. Four joined ETSI 014 batches of 64 keys (2,080 bytes each)."""
    stock_timeout_s: PositiveS = 300.0
    """How long the links may make no block at all while the traffic waits for a stock
    (then the fault is not applied: the run reports that keys stopped flowing)."""
    stock_poll_s: PositiveS = 0.5
    """How often the processes' event files are read for new blocks while waiting."""
    link_worker_nice: Annotated[int, Field(ge=0, le=19)] = 0
    """``KEYPLANE_EMULATION_NICE`` of the nodes: how much lower their link workers run.
    The emulated links stand in for QKD devices, which the host's load does not slow; at
    the default +10 of a node, twelve busy loops leave a worker one block per 15-45 s and
    2,000 keys take most of an hour."""
    drain_timeout_s: PositiveS = 180.0
    """After the last fault: how long pending fetches may take to finish."""
    pairs_014: Annotated[int, Field(ge=1, le=64)] = 4
    """ETSI 014 request loops at once (each its own connections to both KMs)."""
    batch: Annotated[int, Field(ge=1, le=64)] = 16
    """Keys per ``enc_keys`` request."""
    key_bits: Annotated[int, Field(ge=8)] = 256
    retry_s: PositiveS = 0.2
    """Pause of an application after an answer meaning "not yet" (503, status 2)."""
    request_timeout_s: PositiveS = 60.0
    """One HTTP request's bound."""


def _digest(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


@dataclass
class Ledger:
    """What each application obtained: by key_ID (ETSI 014) or (stream, index) (ETSI 004),
    the key's digest and the monotonic time it arrived; every arrival, repeats included."""

    master: dict[str, tuple[str, float]] = field(default_factory=dict)
    slave: dict[str, tuple[str, float]] = field(default_factory=dict)
    stream_a: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    stream_b: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    repeats: list[str] = field(default_factory=list)
    """Keys an application was handed a second time (by id, or the same bytes again)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Error answers by kind, for the report."""
    crash: str | None = None
    """Why an application loop stopped, if it did (then nothing more will arrive)."""
    refused: dict[str, float] = field(default_factory=dict)
    """When the slave's KM finally refused a key its master holds (key_ID -> time)."""
    _seen: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done_014: list[float] = field(default_factory=list)
    """When each ETSI 014 key came to be held by both ends, in that order (so sorted)."""
    done_004: list[float] = field(default_factory=list)
    """The same for ETSI 004 indexes."""

    def _note(self, where: str, ident: str, key: bytes) -> tuple[str, float]:
        d = _digest(key)
        prior = self._seen.get(f"{where}:{d}")
        if prior is not None and prior != ident:
            self.repeats.append(f"{where}: the bytes of {prior} again as {ident}")
        self._seen[f"{where}:{d}"] = ident
        self.changed.set()
        return d, time.monotonic()

    def got_master(self, key_id: str, key: bytes) -> None:
        if key_id in self.master:
            self.repeats.append(f"master: {key_id} twice")
        elif key_id in self.slave:
            self.done_014.append(time.monotonic())
        self.master[key_id] = self._note("014", key_id, key)

    def got_slave(self, key_id: str, key: bytes) -> None:
        if key_id in self.slave:
            self.repeats.append(f"slave: {key_id} twice")
        elif key_id in self.master:
            self.done_014.append(time.monotonic())
        self.slave[key_id] = self._note("014", key_id, key)

    def got_stream(self, end: str, stream: str, index: int, key: bytes) -> None:
        book, other = ((self.stream_a, self.stream_b) if end == "a"
                       else (self.stream_b, self.stream_a))
        if (stream, index) in book:
            self.repeats.append(f"004 {end}: {stream}[{index}] twice")
        elif (stream, index) in other:
            self.done_004.append(time.monotonic())
        book[(stream, index)] = self._note(f"004{end}", f"{stream}[{index}]", key)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def completions_014(self) -> list[float]:
        """When each ETSI 014 key was held by both ends (sorted; the ledger's own list,
        kept as keys arrive: thousands of keys are counted on every arrival)."""
        return self.done_014

    def completions_004(self) -> list[float]:
        """When each ETSI 004 index was held by both ends (sorted)."""
        return self.done_004


class Traffic:
    """The applications' loops (see the module docstring) over a :class:`LocalCluster`."""

    def __init__(self, cluster: LocalCluster, ledger: Ledger, settings: MatrixSettings, *,
                 pair_014: tuple[str, str], pair_004: tuple[str, str]) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.settings = settings
        self.pair_014 = pair_014
        self.pair_004 = pair_004
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fetches: set[asyncio.Task[None]] = set()
        self._fetch_limit = asyncio.Semaphore(2 * settings.pairs_014)
        self._to_confirm: set[str] = set()  # 014 keys the slave got, to confirm next fetch
        self._asking: dict[tuple[str, str], int] = {}  # (end, stream) -> GET_KEY in flight
        self._open = asyncio.Event()  # clear: requests that spend link key wait
        self._open.set()
        self._spending = 0  # such requests in flight
        self._idle = asyncio.Event()  # set whenever none is in flight
        self._idle.set()

    def _node_of(self, sae: str) -> str:
        return next(a.node for a in self.cluster.topology.applications if a.sae_id == sae)

    def _client014(self, sae: str) -> AsyncEtsi014Client:
        cert, key, ca = self.cluster.sae_files(sae)
        return AsyncEtsi014Client(self.cluster.etsi014_url(self._node_of(sae)), cert=cert,
                                  key=key, ca=ca, sae_id=sae,
                                  timeout_s=self.settings.request_timeout_s)

    def _client004(self, sae: str) -> AsyncEtsi004Client:
        cert, key, ca = self.cluster.sae_files(sae)
        return AsyncEtsi004Client(self.cluster.etsi014_url(self._node_of(sae)) + "/etsi004",
                                  cert=cert, key=key, ca=ca,
                                  timeout_s=self.settings.request_timeout_s)

    def start(self) -> None:
        """Start the ETSI 014 loops and the stream."""
        self._tasks = [asyncio.create_task(self._guard(self._loop_014()),
                                           name=f"etsi014-pair-{i}")
                       for i in range(self.settings.pairs_014)]
        self._tasks.append(asyncio.create_task(self._guard(self._loop_004()),
                                               name="etsi004-stream"))

    def pause(self) -> None:
        """Hold new requests that spend link key (``enc_keys``, ``GET_KEY``) until
        :meth:`resume`; the ones in flight finish (:meth:`quiet`)."""
        self._open.clear()

    def resume(self) -> None:
        """Let held requests go."""
        self._open.set()

    async def quiet(self) -> None:
        """Return once no request that spends link key is in flight."""
        while self._spending:
            self._idle.clear()
            await self._idle.wait()

    async def _spend(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, a request that spends link key: held while paused, counted in
        flight."""
        await self._open.wait()
        self._spending += 1
        try:
            return await call()
        finally:
            self._spending -= 1
            if not self._spending:
                self._idle.set()

    async def _guard(self, loop: Awaitable[None]) -> None:
        """A loop that fails (a bug, not a fault: faults are retried) ends the run early."""
        try:
            await loop
        except Exception as exc:
            self.ledger.crash = f"{type(exc).__name__}: {exc}"
            self.ledger.changed.set()
            raise

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]],
                        final: Callable[[Exception], bool] = lambda _e: False) -> Any:
        """``call()`` until it answers; "not yet" answers and unreachable KMs are retried,
        ``final`` errors are raised."""
        while True:
            try:
                return await call()
            except (TransportError, ApiError, Etsi004StatusError) as exc:
                if final(exc):
                    raise
                kind = (f"{what}: {type(exc).__name__}" if not isinstance(exc, ApiError)
                        else f"{what}: HTTP {exc.status_code}")
                self.ledger.error(kind)
            await asyncio.sleep(self.settings.retry_s)

    async def _loop_014(self) -> None:
        master_sae, slave_sae = self.pair_014
        master, slave = self._client014(master_sae), self._client014(slave_sae)
        fetches: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping.is_set():
                keys = await self._retrying("enc_keys", lambda: self._spend(
                    lambda: master.enc_keys(slave_sae, number=self.settings.batch,
                                            size=self.settings.key_bits)))
                for k in keys:
                    self.ledger.got_master(k.key_id, k.key)
                await self._fetch_limit.acquire()
                task = asyncio.create_task(self._fetch_014(slave, [k.key_id for k in keys]))
                for book in (self._fetches, fetches):
                    book.add(task)
                    task.add_done_callback(book.discard)
            # this loop's slave connection serves its fetches until they end
            await asyncio.gather(*list(fetches), return_exceptions=True)
        finally:
            await master.aclose()
            await slave.aclose()

    async def _fetch_014(self, slave: AsyncEtsi014Client, key_ids: list[str]) -> None:
        master_sae, _ = self.pair_014
        unanswered = 0  # attempts whose answer never came (the KM may have served them)

        async def ask() -> Any:
            # with keyplane's acknowledgement (docs/api/etsi014.md): an unanswered attempt
            # is retried with the same key_IDs and gets the same keys; keys received are
            # confirmed on a later fetch
            nonlocal unanswered
            confirm = sorted(self._to_confirm)
            try:
                keys = await slave.dec_keys(master_sae, key_ids, ack=True, confirm=confirm)
                self._to_confirm.difference_update(confirm)
                self._to_confirm.update(key_ids)
                return keys
            except TransportError:
                unanswered += 1
                raise
        try:
            # a 400 ("no such key", "already delivered") is final: the key is lost to the
            # slave; everything else is "not yet"
            keys = await self._retrying(
                "dec_keys", ask,
                final=lambda e: isinstance(e, ApiError) and e.status_code == 400)
            for k in keys:
                self.ledger.got_slave(k.key_id, k.key)
        except ApiError as exc:
            # keys the slave's KM no longer holds (its session ended, or their hold ended);
            # a retry of a request served into a lost answer is no longer a cause (ack)
            logger.warning("dec_keys %s: %s %s (after %d unanswered attempts)", key_ids, exc,
                           exc.details, unanswered)
            for kid in key_ids:
                self.ledger.refused[kid] = time.monotonic()
            self.ledger.error(f"dec_keys final: HTTP {exc.status_code} {exc.message}"
                              + (" after an unanswered attempt" if unanswered else ""))
        finally:
            self._fetch_limit.release()

    async def _loop_004(self) -> None:
        a_sae, b_sae = self.pair_004
        a, b = self._client004(a_sae), self._client004(b_sae)
        qos = QosParameters(Key_chunk_size=self.settings.key_bits // 8, Max_bps=20_000,
                            Timeout=10_000)
        stream = ""
        try:
            while not self.stopping.is_set():
                stream = str(uuid.uuid4())
                # both ends open the same Key_stream_ID; 7 (no route yet) and 1 (peer not
                # connected yet) are retried
                await asyncio.gather(
                    self._retrying("open_connect",
                                   partial(a.open_connect, a_sae, b_sae, qos, stream)),
                    self._retrying("open_connect",
                                   partial(b.open_connect, b_sae, a_sae, qos, stream)))
                gone = await asyncio.gather(self._stream_end(a, "a", stream),
                                            self._stream_end(b, "b", stream))
                if not any(gone):
                    break
                logger.warning("ETSI 004 stream %s lost at the KM; opening a new one", stream)
                self.ledger.error("004: stream lost, reopened")
        finally:
            for c in (a, b):
                with contextlib.suppress(ClientError):
                    await c.close_stream(stream)
                await c.aclose()

    def _other_end_next(self, end: str, stream: str) -> int:
        """The index after the last one the other end got or is fetching: a fetch in flight
        when the traffic stops may still bring its index (this end must fetch it too)."""
        book = self.ledger.stream_b if end == "a" else self.ledger.stream_a
        asking = self._asking.get(("b" if end == "a" else "a", stream), -1)
        return 1 + max(asking, max((i for s, i in book if s == stream), default=-1))

    async def _stream_end(self, client: AsyncEtsi004Client, end: str, stream: str) -> bool:
        """Fetch index after index until stopped (False) or the stream is gone (True); once
        stopped, up to the index the other end reached or is fetching, so that both ends
        hold the same (an end that left while the other's last GET_KEY was in flight left
        that index at one end only: a fault-matrix run counted it as lost)."""
        index = 0
        while not self.stopping.is_set() or index < self._other_end_next(end, stream):
            self._asking[(end, stream)] = index
            try:
                chunk = await self._retrying(
                    f"get_key {end}", partial(self._spend, partial(client.get_key, stream,
                                                                   index)),
                    final=lambda e: isinstance(e, Etsi004StatusError) and int(e.status) in GONE)
            except Etsi004StatusError:
                return True
            finally:
                self._asking.pop((end, stream), None)
            self.ledger.got_stream(end, stream, index, chunk.key)
            index += 1
        return False

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop asking for new keys; let pending fetches finish within ``drain_timeout_s``."""
        self.stopping.set()
        self.resume()
        try:
            async with asyncio.timeout(drain_timeout_s):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                while self._fetches:
                    await asyncio.gather(*list(self._fetches), return_exceptions=True)
        except TimeoutError:
            logger.warning("traffic did not drain within %g s", drain_timeout_s)
        for t in [*self._tasks, *self._fetches]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._fetches, return_exceptions=True)


