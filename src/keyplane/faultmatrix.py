"""The fault matrix of issue #14: faults in turn on a running distributed network while
relayed keys flow, and what each one cost.

Traffic (:class:`~keyplane.faulttraffic.Traffic`, as applications would make it): ETSI 014
pairs fetching relayed keys at both ends, several at once, and one ETSI 004 stream. Every
key each application obtained is recorded (:class:`~keyplane.faulttraffic.Ledger`) with the
time it arrived: a key is *complete* once both ends hold it with the same bytes. Faults
(:class:`FaultSpec`), each once keys flow and the links made a stock of key while the
traffic paused (:func:`stock_links`): ``kill`` SIGKILLs a keyplane process and starts it
again; ``nats`` and ``postgres`` stop the server for ``duration_s`` and start it again on
the same port (and data). For each fault, :func:`run_fault` measures the *outage* (fault
start to the first key completed at both ends, for the ETSI 014 pair and for the stream)
and how soon after the fault's end delivery resumed (the end is the restarted process's
ready line, or the server's restart). After the last fault the traffic stops, pending
fetches finish, and :func:`check` counts keys held at one end only, keys handed out twice,
and link keys used for two different keys (from the KMs' ``key_relayed`` events: each hop
names the link key bytes it padded with).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from keyplane.cluster import CONTROLLER, ClusterSettings, EventTail, LocalCluster
from keyplane.config import Topology
from keyplane.events import Event, EventType
from keyplane.faulttraffic import GONE, Ledger, MatrixSettings, Traffic

__all__ = [
    "GONE",
    "PHASES",
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
    "phase_times",
    "run_fault",
    "run_matrix",
    "share_014",
    "stale_link_alarms",
    "stock_links",
    "wait_flowing",
]

logger = logging.getLogger(__name__)


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
    stock_s: float | None = None
    """How long the traffic paused before the fault for the links' stock
    (:func:`stock_links`; None: no pause)."""
    phases: dict[str, float | None] = field(default_factory=dict)
    """When each step of the recovery happened, in seconds after the fault's end (negative:
    before it; None: not seen), from the processes' events (:func:`phase_times`)."""

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


def _count_since(times: list[float], t: float) -> int:
    return len(times) - bisect.bisect_left(times, t)


async def wait_flowing(ledger: Ledger, since: float, settings: MatrixSettings,
                       keys_014: int = 0) -> bool:
    """Wait until ``max(flowing_keys, keys_014)`` ETSI 014 keys and ``flowing_keys`` ETSI 004
    indexes completed after ``since``; False once ``flowing_timeout_s`` passes with no key
    completed (a stall: the wait for a large share is bounded by progress, not by a total
    that a loaded machine's pace would have to be guessed for). A stall is per interface:
    ETSI 014 keys still flowing do not keep a wait for a stalled ETSI 004 stream going (a
    run waited 18 min so)."""
    want_014 = max(settings.flowing_keys, keys_014)
    wants = ((ledger.completions_014, want_014),
             (ledger.completions_004, settings.flowing_keys))

    def flowing() -> bool:
        return all(_count_since(done(), since) >= want for done, want in wants)

    while True:
        before = [len(done()) for done, _ in wants]
        if await _until(ledger, flowing, settings.flowing_timeout_s):
            return True
        if ledger.crash is not None or any(
                _count_since(done(), since) < want and len(done()) == n
                for (done, want), n in zip(wants, before, strict=True)):
            return False


async def stock_links(cluster: LocalCluster, traffic: Traffic, settings: MatrixSettings
                      ) -> bool:
    """Pause the requests that spend link key until every link of the topology has made
    ``stock_bytes`` per direction since the last such request ended, then resume them;
    False (the traffic resumed) if some link made no block for ``stock_timeout_s``.

    What a link made is read from its ``link_block`` events (``secret_bits``; each
    direction sends with half of a block). Key the stores held before counts for nothing:
    the stock is at least this much."""
    traffic.pause()
    try:
        await traffic.quiet()
        tail = EventTail(cluster.state, contains='"link_block"')
        since = time.monotonic()
        need = {link.link_id: settings.stock_bytes for link in cluster.topology.links}
        last = time.monotonic()
        while any(n > 0 for n in need.values()):
            got = [e for e in tail.new() if e.type is EventType.link_block and e.t >= since]
            for e in got:
                lid = str(e.data.get("link"))
                if lid in need:
                    need[lid] -= int(e.data.get("secret_bits") or 0) // 16
            if got:
                last = time.monotonic()
            elif time.monotonic() - last > settings.stock_timeout_s:
                logger.warning("links made no block for %g s; still short: %s",
                               settings.stock_timeout_s,
                               {k: v for k, v in need.items() if v > 0})
                return False
            await asyncio.sleep(settings.stock_poll_s)  # a poll of the event files
        return True
    finally:
        traffic.resume()


def share_014(settings: MatrixSettings, faults: int) -> int:
    """ETSI 014 keys to complete before each fault and after the last one: ``keys_014``
    spread over the ``faults + 1`` intervals."""
    return math.ceil(settings.keys_014 / (faults + 1))


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


PHASES = ("bus", "session", "link_key", "delivered")
"""The recovery's steps (:func:`phase_times`), in the order a key needs them."""


def phase_times(events: list[Event], result: FaultResult) -> dict[str, float | None]:
    """Where the seconds of a kill's recovery went, from the processes' events: when the
    restarted element was on the bus (``bus``: its ``element_started``, subscriptions
    made), had its sessions back (``session``: Admission Control's re-push to a restarted
    KM, or a restarted controller's ``session_restored``), relayed with link key
    (``link_key``: its first ``key_relayed``; for the controller, any KM's first after the
    end, as the KMs relay while it is down) and handed a key to an application
    (``delivered``: its first ``key_delivered``; likewise), each in seconds after the
    fault's end. Times are the events' ``t``: ``time.monotonic()`` of the emitting process,
    one clock for every process on the host, as the fault's own times (an event's ``wall``
    is that clock plus an offset fixed at its process's start, so a wall-clock step between
    two starts would skew it: a run here saw 3-4 s).

    The ledger's ``resumed_014_s`` / ``resumed_004_s`` are the last step (both ends hold a
    key). Server faults have no restarted element: empty."""
    fault = result.fault
    if fault.kind != "kill":
        return {}
    is_ctl = fault.target == CONTROLLER
    out: dict[str, float | None] = dict.fromkeys(PHASES)

    def first(name: str, pred: Callable[[Event], bool], since: float = result.started
              ) -> None:
        times = [e.t for e in events if e.t >= since and pred(e)]
        if times:
            out[name] = min(times) - result.ended

    def on_target(e: Event) -> bool:
        return is_ctl or e.node == fault.target

    first("bus", lambda e: e.type is EventType.element_started and (
        e.element == "admission" if is_ctl else (e.element == "km"
                                                 and e.node == fault.target)))
    first("session", lambda e: e.element == "admission" and (
        e.type is EventType.session_restored if is_ctl else (
            e.type is EventType.configured and e.node == fault.target
            and bool(e.data.get("repushed")))))
    # the KMs relay and deliver while the controller is down: its first ones after its end
    since = result.ended if is_ctl else result.started
    first("link_key", lambda e: e.type is EventType.key_relayed and on_target(e), since)
    first("delivered", lambda e: e.type is EventType.key_delivered and on_target(e), since)
    return out


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
    for r in results:
        r.phases = phase_times(events, r)
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
    base = cluster_settings or ClusterSettings()
    cluster_settings = base.model_copy(update={"env": {
        "KEYPLANE_EMULATION_NICE": str(st.link_worker_nice), **base.env}})
    faults = faults if faults is not None else default_faults("km1", "km0", "km2")
    ledger = Ledger()
    results: list[FaultResult] = []
    not_flowing: list[str] = []
    async with LocalCluster(topo, workdir, cluster_settings) as cluster:
        traffic = Traffic(cluster, ledger, st, pair_014=("sae1", "sae2"),
                          pair_004=("sae3", "sae4"))
        traffic.start()
        since = 0.0
        share = share_014(st, len(faults))
        try:
            for fault in faults:
                if not await wait_flowing(ledger, since, st, share):
                    not_flowing.append(fault.name)
                    break
                stock_s = None
                if st.stock_bytes:
                    t0 = time.monotonic()
                    if not await stock_links(cluster, traffic, st):
                        not_flowing.append(f"{fault.name} (no stock)")
                        break
                    stock_s = time.monotonic() - t0
                    # the fault strikes while keys flow again
                    if not await wait_flowing(ledger, time.monotonic(), st):
                        not_flowing.append(fault.name)
                        break
                result = await run_fault(cluster, ledger, fault, st)
                result.stock_s = stock_s
                results.append(result)
                logger.info("%s: recovery %.1f s, outage %s s, resumed %s s after its end",
                            fault.name, result.recovery_s, result.outage_s, result.resumed_s)
                since = result.ended
            done = ledger.completions_014()
            rest = max(share, st.keys_014 - (len(done) - _count_since(done, since)))
            if not not_flowing and not await wait_flowing(ledger, since, st, rest):
                not_flowing.append("after the last fault")
        finally:
            await traffic.stop(st.drain_timeout_s)
        exited = cluster.exited()
        report = check(ledger, cluster.events(), results)
    report.not_flowing = not_flowing
    report.exited = exited
    report.crash = ledger.crash
    return report
