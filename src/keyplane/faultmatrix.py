"""The fault matrix of issue #14: faults in turn on a running distributed network while
relayed keys flow, and what each one cost.

Traffic (:class:`Traffic`), as applications would make it:

* an ETSI 014 pair: the master SAE asks its KM for keys (``enc_keys``) and hands each batch's
  key_IDs to the slave SAE, which fetches them at its KM (``dec_keys``), retrying while the
  KM answers 503 or cannot be reached;
* one ETSI 004 stream: both SAEs open it and fetch index after index (``GET_KEY``), each at
  its own pace, retrying while the KM has no key yet or cannot be reached; a stream the KM
  no longer knows is opened again under a new Key_stream_ID.

Every key each application obtained is recorded (:class:`Ledger`) with the time it arrived:
a key is *complete* once both ends hold it with the same bytes. Faults
(:class:`FaultSpec`): ``kill`` SIGKILLs a keyplane process and starts it again; ``nats`` and
``postgres`` stop the server for ``duration_s`` and start it again on the same port (and
data). For each fault, :func:`run_fault` measures the *outage* (fault start to the first
key completed at both ends, for the ETSI 014 pair and for the stream) and how soon after
the fault's end delivery resumed (the end is the restarted process's ready line, or the
server's restart). After the last fault the traffic stops, pending fetches finish, and
:func:`check` counts keys held at one end only, keys handed out twice, and link keys used
for two different keys (from the KMs' ``key_relayed`` events: each hop names the link key
bytes it padded with).
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
from pathlib import Path
from typing import Annotated, Any, Literal

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
from keyplane.cluster import CONTROLLER, ClusterSettings, LocalCluster
from keyplane.config import Topology
from keyplane.events import Event, EventType

__all__ = [
    "FaultResult",
    "FaultSpec",
    "Ledger",
    "MatrixReport",
    "MatrixSettings",
    "Traffic",
    "check",
    "default_faults",
    "fault_topology",
    "link_key_reuse",
    "run_fault",
    "run_matrix",
    "stale_link_alarms",
    "wait_flowing",
]

logger = logging.getLogger(__name__)

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
    flowing_timeout_s: PositiveS = 300.0
    """How long to wait for that."""
    drain_timeout_s: PositiveS = 180.0
    """After the last fault: how long pending fetches may take to finish."""
    batch: Annotated[int, Field(ge=1, le=64)] = 4
    """Keys per ``enc_keys`` request."""
    key_bits: Annotated[int, Field(ge=8)] = 256
    retry_s: PositiveS = 0.2
    """Pause of an application after an answer meaning "not yet" (503, status 2)."""
    request_timeout_s: PositiveS = 60.0
    """One HTTP request's bound."""


@dataclass(frozen=True)
class FaultSpec:
    """One fault: ``kill`` a keyplane process (then start it again), or stop ``nats`` or
    ``postgres`` for ``duration_s``."""

    name: str
    kind: Literal["kill", "nats", "postgres"]
    target: str = ""
    duration_s: float = 0.0


def default_faults(source: str, intermediate: str, destination: str,
                   nats_s: float = 30.0, postgres_s: float = 10.0) -> list[FaultSpec]:
    """Issue #14's matrix: kill -9 the three KMs of a 2-hop path and the controller, stop
    nats-server for ``nats_s`` and PostgreSQL for ``postgres_s``."""
    return [FaultSpec("kill -9 source KM", "kill", source),
            FaultSpec("kill -9 intermediate KM", "kill", intermediate),
            FaultSpec("kill -9 destination KM", "kill", destination),
            FaultSpec("kill -9 controller", "kill", CONTROLLER),
            FaultSpec(f"nats-server down {nats_s:g} s", "nats", duration_s=nats_s),
            FaultSpec(f"PostgreSQL down {postgres_s:g} s", "postgres",
                      duration_s=postgres_s)]


def fault_topology(length_km: float = 5.0) -> Topology:
    """The matrix's network: km1 - km0 - km2, an ETSI 014 pair sae1 (km1) -> sae2 (km2) and
    an ETSI 004 pair sae3 (km1) <-> sae4 (km2), both relayed over the two hops."""
    sla = {"max_sessions": 4, "max_bps": 200_000, "min_bps": 0, "priority": 3,
           "idle_timeout_s": 120}
    return Topology.model_validate({
        "name": "faults",
        "nodes": [{"id": "km1"}, {"id": "km0"}, {"id": "km2"}],
        "links": [{"endpoints": ["km1", "km0"], "length_km": length_km},
                  {"endpoints": ["km0", "km2"], "length_km": length_km}],
        "users": [
            {"id": "alice", "certificate_subject": "CN=alice,O=keyplane-faults",
             "sla": {**sla, "allowed_peers": ["sae2", "sae4"]}},
            {"id": "bob", "certificate_subject": "CN=bob,O=keyplane-faults",
             "sla": {**sla, "allowed_peers": ["sae1", "sae3"]}}],
        "applications": [
            {"sae_id": "sae1", "owner": "alice", "node": "km1"},
            {"sae_id": "sae3", "owner": "alice", "node": "km1"},
            {"sae_id": "sae2", "owner": "bob", "node": "km2"},
            {"sae_id": "sae4", "owner": "bob", "node": "km2"}]})


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
        self.master[key_id] = self._note("014", key_id, key)

    def got_slave(self, key_id: str, key: bytes) -> None:
        if key_id in self.slave:
            self.repeats.append(f"slave: {key_id} twice")
        self.slave[key_id] = self._note("014", key_id, key)

    def got_stream(self, end: str, stream: str, index: int, key: bytes) -> None:
        book = self.stream_a if end == "a" else self.stream_b
        if (stream, index) in book:
            self.repeats.append(f"004 {end}: {stream}[{index}] twice")
        book[(stream, index)] = self._note(f"004{end}", f"{stream}[{index}]", key)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def completions_014(self) -> list[float]:
        """When each ETSI 014 key was held by both ends (sorted)."""
        return sorted(max(t, self.slave[k][1]) for k, (_, t) in self.master.items()
                      if k in self.slave)

    def completions_004(self) -> list[float]:
        """When each ETSI 004 index was held by both ends (sorted)."""
        return sorted(max(t, self.stream_b[k][1]) for k, (_, t) in self.stream_a.items()
                      if k in self.stream_b)


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
        self._fetch_limit = asyncio.Semaphore(8)

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
        """Start both loops."""
        self._tasks = [asyncio.create_task(self._guard(self._loop_014()), name="etsi014-pair"),
                       asyncio.create_task(self._guard(self._loop_004()),
                                           name="etsi004-stream")]

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
        master = self._client014(master_sae)
        try:
            while not self.stopping.is_set():
                keys = await self._retrying("enc_keys", lambda: master.enc_keys(
                    slave_sae, number=self.settings.batch, size=self.settings.key_bits))
                for k in keys:
                    self.ledger.got_master(k.key_id, k.key)
                await self._fetch_limit.acquire()
                task = asyncio.create_task(self._fetch_014([k.key_id for k in keys]))
                self._fetches.add(task)
                task.add_done_callback(self._fetches.discard)
        finally:
            await master.aclose()

    async def _fetch_014(self, key_ids: list[str]) -> None:
        master_sae, slave_sae = self.pair_014
        slave = self._client014(slave_sae)
        try:
            # a 400 ("no such key", "already delivered") is final: the key is lost to the
            # slave; everything else is "not yet"
            keys = await self._retrying(
                "dec_keys", lambda: slave.dec_keys(master_sae, key_ids),
                final=lambda e: isinstance(e, ApiError) and e.status_code == 400)
            for k in keys:
                self.ledger.got_slave(k.key_id, k.key)
        except ApiError as exc:
            logger.warning("dec_keys %s: %s", key_ids, exc)
            for kid in key_ids:
                self.ledger.refused[kid] = time.monotonic()
            self.ledger.error(f"dec_keys final: HTTP {exc.status_code} {exc.message}")
        finally:
            self._fetch_limit.release()
            await slave.aclose()

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
        book = self.ledger.stream_b if end == "a" else self.ledger.stream_a
        return 1 + max((i for s, i in book if s == stream), default=-1)

    async def _stream_end(self, client: AsyncEtsi004Client, end: str, stream: str) -> bool:
        """Fetch index after index until stopped (False) or the stream is gone (True); once
        stopped, up to the index the other end reached, so that both ends hold the same."""
        index = 0
        while not self.stopping.is_set() or index < self._other_end_next(end, stream):
            try:
                chunk = await self._retrying(
                    f"get_key {end}", partial(client.get_key, stream, index),
                    final=lambda e: isinstance(e, Etsi004StatusError) and int(e.status) in GONE)
            except Etsi004StatusError:
                return True
            self.ledger.got_stream(end, stream, index, chunk.key)
            index += 1
        return False

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop asking for new keys; let pending fetches finish within ``drain_timeout_s``."""
        self.stopping.set()
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


@dataclass
class FaultResult:
    """What one fault cost (seconds; None: delivery never resumed within the timeout)."""

    fault: FaultSpec
    started: float
    ended: float
    recovery_s: float
    """Fault end minus fault start: restart to ready line, or the outage's duration."""
    outage_014_s: float | None = None
    outage_004_s: float | None = None
    resumed_014_s: float | None = None
    """From the fault's end to the first ETSI 014 key held at both ends."""
    resumed_004_s: float | None = None

    @property
    def outage_s(self) -> float | None:
        """The longer of the two outages."""
        if self.outage_014_s is None or self.outage_004_s is None:
            return None
        return max(self.outage_014_s, self.outage_004_s)

    @property
    def resumed_s(self) -> float | None:
        """The later of the two resumptions."""
        if self.resumed_014_s is None or self.resumed_004_s is None:
            return None
        return max(self.resumed_014_s, self.resumed_004_s)


async def _until(ledger: Ledger, pred: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until ``pred()`` holds, woken by every arrival; False after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not pred():
                if ledger.crash is not None:
                    return False
                ledger.changed.clear()
                await ledger.changed.wait()
    except TimeoutError:
        return False
    return True


def _first_after(times: list[float], t: float) -> float | None:
    return next((x for x in times if x >= t), None)


async def wait_flowing(ledger: Ledger, since: float, settings: MatrixSettings) -> bool:
    """Wait until ``flowing_keys`` keys of each kind completed after ``since``."""
    def flowing() -> bool:
        return (sum(1 for x in ledger.completions_014() if x >= since) >= settings.flowing_keys
                and sum(1 for x in ledger.completions_004() if x >= since)
                >= settings.flowing_keys)
    return await _until(ledger, flowing, settings.flowing_timeout_s)


async def run_fault(cluster: LocalCluster, ledger: Ledger, fault: FaultSpec,
                    settings: MatrixSettings) -> FaultResult:
    """Apply ``fault``, end it, and measure outage and resumption from the ledger."""
    started = time.monotonic()
    logger.info("fault: %s", fault.name)
    if fault.kind == "kill":
        await cluster.kill(fault.target)
        await cluster.start(fault.target)
    elif fault.kind == "nats":
        await cluster.stop_nats()
        await asyncio.sleep(fault.duration_s)  # the fault's length, not a synchronisation
        await cluster.start_nats()
    else:
        await cluster.stop_postgres()
        await asyncio.sleep(fault.duration_s)  # the fault's length
        await cluster.start_postgres()
    ended = time.monotonic()
    await _until(ledger, lambda: (_first_after(ledger.completions_014(), ended) is not None
                                  and _first_after(ledger.completions_004(), ended)
                                  is not None), settings.resume_timeout_s)
    c014, c004 = _first_after(ledger.completions_014(), ended), _first_after(
        ledger.completions_004(), ended)
    return FaultResult(
        fault, started, ended, ended - started,
        outage_014_s=None if c014 is None else c014 - started,
        outage_004_s=None if c004 is None else c004 - started,
        resumed_014_s=None if c014 is None else c014 - ended,
        resumed_004_s=None if c004 is None else c004 - ended)


def link_key_reuse(events: list[Event]) -> list[str]:
    """Link key bytes padded onto two different sets of keys, from ``key_relayed`` events.

    Each hop names the bytes it used as ``block:offset+length`` of its link; the same bytes
    again for the same key_IDs are a retransmission of one frame, not a reuse.
    """
    used: dict[tuple[str, str], list[tuple[int, int, tuple[str, ...]]]] = {}
    found: list[str] = []
    for e in events:
        if e.type is not EventType.key_relayed:
            continue
        link = str(e.data.get("link_id"))
        keys = tuple(e.data.get("key_ids") or ())
        for seg in e.data.get("link_key_ids") or ():
            block, _, rest = str(seg).partition(":")
            off, _, n = rest.partition("+")
            lo, hi = int(off), int(off) + int(n)
            spans = used.setdefault((link, block), [])
            for a, b, other in spans:
                if lo < b and a < hi and other != keys:
                    found.append(f"{link} block {block} bytes [{max(a, lo)}, {min(b, hi)}) "
                                 f"padded {list(other)} and {list(keys)}")
            spans.append((lo, hi, keys))
    return found


def stale_link_alarms(events: list[Event], blocks_after: int = 3, grace_s: float = 5.0
                      ) -> list[str]:
    """Links the Monitoring Element still holds down (a ``link_down`` alarm, no ``cleared``
    after it) while their QKD modules kept delivering blocks (``blocks_after`` or more
    ``link_block`` events later than ``grace_s`` after the alarm): Routing refuses new
    sessions over a link that works."""
    down: dict[str, float] = {}
    for e in events:
        if e.type is EventType.alarm and e.data.get("link"):
            link = str(e.data["link"])
            if e.data.get("kind") == "link_down":
                down[link] = e.wall
            elif e.data.get("kind") == "cleared":
                down.pop(link, None)
    stale = []
    for link, t in sorted(down.items()):
        n = sum(1 for e in events if e.type is EventType.link_block
                and e.data.get("link_id") == link and e.wall > t + grace_s)
        if n >= blocks_after:
            stale.append(f"{link}: link_down alarm not cleared, {n} blocks delivered since")
    return stale


@dataclass
class MatrixReport:
    """Totals of a run: the per-fault results and the checks of :func:`check`."""

    results: list[FaultResult]
    keys_014: int
    keys_004: int
    lost_014: list[str]
    lost_004: list[str]
    mismatched: list[str]
    duplicated: list[str]
    link_key_reuse: list[str]
    errors: dict[str, int]
    crash: str | None = None
    """An application loop's failure (:attr:`Ledger.crash`)."""
    lost_by_fault: dict[str, int] = field(default_factory=dict)
    """Keys held at one end only, by the last fault started before the other end's KM
    finally refused it (else before the one end got it); ``before the faults`` for none."""
    not_flowing: list[str] = field(default_factory=list)
    """Faults before which keys did not flow within ``flowing_timeout_s`` (not applied)."""
    exited: dict[str, int] = field(default_factory=dict)
    """Keyplane processes that exited on their own during the run."""
    stale_alarms: list[str] = field(default_factory=list)
    """:func:`stale_link_alarms` at the end of the run."""


def check(ledger: Ledger, events: list[Event], results: list[FaultResult]) -> MatrixReport:
    """Count, after the traffic stopped, keys held at one end only (or with other bytes),
    keys handed out twice, and link keys reused."""
    lost_014 = sorted(set(ledger.master) ^ set(ledger.slave))
    lost_004 = sorted(f"{s}[{i}]" for s, i in set(ledger.stream_a) ^ set(ledger.stream_b))
    mismatched = sorted([k for k in set(ledger.master) & set(ledger.slave)
                         if ledger.master[k][0] != ledger.slave[k][0]]
                        + [f"{s}[{i}]" for s, i in set(ledger.stream_a) & set(ledger.stream_b)
                           if ledger.stream_a[(s, i)][0] != ledger.stream_b[(s, i)][0]])
    duplicated = list(ledger.repeats)
    # the KMs' own account: no key_ID delivered twice by one KM
    delivered: dict[tuple[str | None, str], int] = {}
    for e in events:
        if e.type is EventType.key_delivered:
            for kid in e.data.get("key_ids") or ():
                delivered[(e.node, str(kid))] = delivered.get((e.node, str(kid)), 0) + 1
    duplicated += [f"{node} delivered {kid} {n} times" for (node, kid), n in
                   sorted(delivered.items(), key=lambda x: (str(x[0][0]), x[0][1])) if n > 1]
    lost_by_fault: dict[str, int] = {}
    # a key is the fault's that made its other end fail: the time of the final refusal,
    # else the time the one end got it
    for when in ([ledger.refused.get(k) or (ledger.master.get(k) or ledger.slave[k])[1]
                  for k in lost_014]
                 + [(ledger.stream_a.get(k) or ledger.stream_b[k])[1]
                    for k in set(ledger.stream_a) ^ set(ledger.stream_b)]):
        name = next((r.fault.name for r in reversed(results) if r.started <= when),
                    "before the faults")
        lost_by_fault[name] = lost_by_fault.get(name, 0) + 1
    return MatrixReport(results=results, lost_by_fault=lost_by_fault,
                        stale_alarms=stale_link_alarms(events),
                        keys_014=len(set(ledger.master) & set(ledger.slave)),
                        keys_004=len(set(ledger.stream_a) & set(ledger.stream_b)),
                        lost_014=lost_014, lost_004=lost_004, mismatched=mismatched,
                        duplicated=duplicated, link_key_reuse=link_key_reuse(events),
                        errors=dict(ledger.errors))


async def run_matrix(workdir: Path, *, faults: list[FaultSpec] | None = None,
                     settings: MatrixSettings | None = None,
                     cluster_settings: ClusterSettings | None = None,
                     topology: Topology | None = None) -> MatrixReport:
    """Start :func:`fault_topology` (or ``topology``, with the same SAEs) as a
    :class:`LocalCluster` under ``workdir``, run the traffic, apply ``faults`` (default:
    :func:`default_faults`) in turn, each once keys flow, and report."""
    st = settings or MatrixSettings()
    topo = topology or fault_topology()
    faults = faults if faults is not None else default_faults("km1", "km0", "km2")
    ledger = Ledger()
    results: list[FaultResult] = []
    not_flowing: list[str] = []
    async with LocalCluster(topo, workdir, cluster_settings) as cluster:
        traffic = Traffic(cluster, ledger, st, pair_014=("sae1", "sae2"),
                          pair_004=("sae3", "sae4"))
        traffic.start()
        since = 0.0
        try:
            for fault in faults:
                if not await wait_flowing(ledger, since, st):
                    not_flowing.append(fault.name)
                    break
                result = await run_fault(cluster, ledger, fault, st)
                results.append(result)
                logger.info("%s: recovery %.1f s, outage %s s, resumed %s s after its end",
                            fault.name, result.recovery_s, result.outage_s, result.resumed_s)
                since = result.ended
            if not not_flowing and not await wait_flowing(ledger, since, st):
                not_flowing.append("after the last fault")
        finally:
            await traffic.stop(st.drain_timeout_s)
        exited = cluster.exited()
        report = check(ledger, cluster.events(), results)
    report.not_flowing = not_flowing
    report.exited = exited
    report.crash = ledger.crash
    return report
