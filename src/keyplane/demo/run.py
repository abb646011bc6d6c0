"""``keyplane demo``: the paper's proof of concept, end to end, with its Fig. 4 timeline.

Embedded: every element in this process (KMs, control plane, emulated links, ETSI 015
agents), the SAE pairs of the scenario calling their KMs in process. Writes into ``out``:
``events.jsonl`` (every event), ``timeline.png`` and ``timeline.html`` (paper Fig. 4) and
``summary.json`` (per session: path, keys delivered, whether both ends matched, time to
first key; per link: blocks, QBER, secret bits).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

import keyplane
from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.config import Topology
from keyplane.demo.entanglement import (
    entanglement_asks,
    entanglement_lines,
    entanglement_problems,
    run_entanglement_asks,
)
from keyplane.demo.scenario import PairResult, SaePair, ServiceEndpoint, run_pair
from keyplane.demo.timeline import render_timeline
from keyplane.errors import KeyplaneError
from keyplane.events import Event, EventStream, EventType, JsonlSink, MemorySink
from keyplane.fileperms import ensure_private_dir, restrict, write_private
from keyplane.keymanager.interface import Caller
from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic
from keyplane.runtime import Embedded, RuntimeContext
from keyplane.store import Database, sqlite_url

__all__ = ["DemoOptions", "apply_overrides", "default_pairs", "demo_problems",
           "run_embedded_demo", "summarize"]

LIVE_REFRESH_S = 0.125
"""Period of the live view's redraw (a display rate, not a wait on anything)."""


@dataclass
class DemoOptions:
    """What ``keyplane demo`` runs."""

    topology: Topology
    out: Path
    pairs: list[SaePair] = field(default_factory=list)
    keys: int = 8
    chunk_bytes: int = 32
    interval_s: float = 0.05
    eve_link: str | None = None
    eve_after_s: float = 1.0
    timeout_s: float = 60.0
    """The applications' wait per request (ETSI 004 QoS ``Timeout``)."""
    stall_s: float | None = None
    """How long a pair may go without a key before it gives up; None: ``timeout_s``, and
    with ``eve_link`` three times that, so the pair outlasts the eavesdropper: its link
    makes no key until Monitoring sees the QBER (the emulation's next block, from link
    workers at low OS priority: 2-66 s measured under 12 busy loops on 2 cores) and the
    session is rerouted, and a request that waited through it is asked again (status 6 is
    worth a retry)."""
    command_timeout_s: float = 10.0
    close_wait_s: float = 30.0
    """After the pairs closed: how long to wait for Admission Control to report each session
    closed (the timeline's last events); a loaded machine takes seconds."""
    seed: int = 1
    live: bool = True


def default_pairs(topo: Topology) -> list[SaePair]:
    """The paper's three sessions (0-1, 2-3, 4-5) when the topology has those SAEs,
    otherwise consecutive applications."""
    saes = [a.sae_id for a in topo.applications]
    paper = [SaePair("sae0", "sae1"), SaePair("sae2", "sae3"), SaePair("sae4", "sae5")]
    if all(p.a in saes and p.b in saes for p in paper):
        return paper
    return [SaePair(saes[i], saes[i + 1]) for i in range(0, len(saes) - 1, 2)]


def apply_overrides(topo: Topology, *, protocol: str | None = None,
                    length_km: float | None = None) -> Topology:
    """The topology with every link's protocol and/or length replaced."""
    update: dict[str, Any] = {}
    if protocol is not None:
        update["protocol"] = protocol
    if length_km is not None:
        update["length_km"] = length_km
    if not update:
        return topo
    links = [link.model_copy(update=update) for link in topo.links]
    data = topo.model_dump()
    data["links"] = [link.model_dump() for link in links]
    return Topology.model_validate(data)


def _caller(topo: Topology, sae: str) -> Caller:
    owner = topo.user(topo.application(sae).owner)
    return Caller(owner.certificate_subject or f"CN={owner.id},O=keyplane")


def run_metadata(topo: Topology, *, seed: int | None, mode: str) -> dict[str, Any]:
    """What a summary needs to be reproduced: version, topology digest, seed, mode."""
    canonical = json.dumps(topo.model_dump(mode="json"), sort_keys=True).encode()
    return {"keyplane_version": keyplane.__version__, "mode": mode,
            "topology": topo.name,
            "topology_sha256": hashlib.sha256(canonical).hexdigest(), "seed": seed,
            "python": platform.python_version(), "machine": platform.machine()}


def _key_rate(mine: list[Event], node: str | None) -> dict[str, float | None]:
    """Delivered keys and bits per second at ``node``, from the session's open to its last
    delivery there (None before two deliveries)."""
    opened = min((e.t for e in mine if e.type is EventType.request_arrived), default=None)
    got = [e for e in mine if e.type is EventType.key_delivered and e.node == node]
    if opened is None or not got or got[-1].t <= opened:
        return {"keys_per_s": None, "bits_per_s": None}
    span = got[-1].t - opened
    keys = sum(int(e.data.get("key_count") or 1) for e in got)
    bits = sum(int(e.data.get("bits") or 0) for e in got)
    return {"keys_per_s": round(keys / span, 3), "bits_per_s": round(bits / span, 1)}


def summarize(topo: Topology, results: list[PairResult], events: list[Event], *,
              seed: int | None = None, mode: str = "embedded") -> dict[str, Any]:
    """The demo's summary.json: run metadata, sessions (with the route evidence and measured
    key rates) and links."""
    sessions = []
    for r in results:
        sid = r.key_stream_id
        mine = [e for e in events if e.session == sid and sid]
        paths = [e.data.get("path") for e in mine
                 if e.type is EventType.route_computed and e.element == "admission"]
        relayed_at = sorted({e.node for e in mine if e.type is EventType.key_relayed and e.node})
        delivered_at = sorted({e.node for e in mine
                               if e.type is EventType.key_delivered and e.node})
        path = paths[-1] if paths else None
        intermediates = path[1:-1] if path else []
        sessions.append({
            "pair": r.pair.label,
            "key_stream_id": sid,
            "path": path,
            "paths": paths,
            "rerouted": len(paths) > 1,
            "status": r.status,
            "error": r.error,
            "keys_delivered": r.keys_delivered,
            "keys_matched": r.keys_matched,
            "all_keys_matched": r.all_matched,
            "opened_s": r.opened_s,
            "time_to_first_key_s": r.first_key_s,
            "relayed_at": relayed_at,
            "delivered_at": delivered_at,
            "intermediates_never_delivered": not (set(intermediates) & set(delivered_at)),
            "key_fingerprints": r.fingerprints,
            "lost_indexes": r.lost_indexes,
            "open_attempts": r.open_attempts,
            "reopened": r.reopened,
            "ended_streams": r.ended_streams,
            "key_rate": _key_rate(mine, path[0] if path else None),
        })
    links: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type in (EventType.link_block, EventType.link_block_aborted):
            lid = str(e.data.get("link"))
            s = links.setdefault(lid, {"blocks": 0, "aborted": 0, "secret_bits": 0,
                                       "qber": []})
            if e.type is EventType.link_block and e.data.get("status") == "delivered":
                s["blocks"] += 1
                s["secret_bits"] += int(e.data.get("secret_bits") or 0)
            else:
                s["aborted"] += 1
            if e.data.get("qber") is not None:
                s["qber"].append(float(e.data["qber"]))
    for s in links.values():
        q = s.pop("qber")
        s["mean_qber"] = sum(q) / len(q) if q else None
    alarms = [{"link": e.data.get("link") or e.data.get("link_id"), "kind": e.data.get("kind"),
               "t": e.t} for e in events if e.type is EventType.alarm]
    return {"run": run_metadata(topo, seed=seed, mode=mode), "topology": topo.name,
            "sessions": sessions, "links": links, "alarms": alarms, "events": len(events)}


def demo_problems(summary: dict[str, Any], keys: int, eve_link: str | None = None
                  ) -> list[str]:
    """What the demo was asked to show and did not (empty: it succeeded).

    Every session must close with ``keys`` keys identical at both ends. With an
    eavesdropper on ``eve_link``, the Monitoring Element must have raised ``qber_high`` on it,
    and a session whose path crossed that link may instead have been refused or stopped
    (that is the refusal the demo shows when no other path exists); every other session
    must still succeed. ``keyplane demo`` exits non-zero when this is not empty.
    """
    problems: list[str] = []
    detected = any(a.get("kind") == "qber_high" and a.get("link") == eve_link
                   for a in summary.get("alarms", []))
    if eve_link is not None and not detected:
        problems.append(f"the eavesdropper on {eve_link} was not detected (no qber_high alarm)")
    for s in summary["sessions"]:
        if s["status"] == "closed" and s["all_keys_matched"] and s["keys_delivered"] >= keys:
            continue
        crossed = any(_uses_link(p, eve_link) for p in s.get("paths") or [])
        if eve_link is not None and detected and crossed:
            continue  # refused or cut off by the eavesdropper's alarm: what --eve shows
        why = s["error"] or (f"{s['keys_matched']}/{s['keys_delivered']} of {keys} keys "
                             "identical at both ends")
        problems.append(f"{s['pair']}: {s['status']}: {why}")
    return problems + entanglement_problems(summary)


def _uses_link(path: list[str] | None, link_id: str | None) -> bool:
    if not path or link_id is None:
        return False
    hops = {f"{a}-{b}" for a, b in itertools.pairwise(path)}
    hops |= {f"{b}-{a}" for a, b in itertools.pairwise(path)}
    return link_id in hops


def _closed_by_admission(sid: str) -> Callable[[Event], bool]:
    """Matches Admission Control's session_closed event for ``sid``."""
    def match(e: Event) -> bool:
        return (e.type is EventType.session_closed and e.element == "admission"
                and e.session == sid)
    return match


def _view(results: list[PairResult], mem: MemorySink, t0: float) -> Group:
    table = Table(title=f"keyplane demo — {time.monotonic() - t0:5.1f} s", expand=False)
    for col in ("pair", "stream", "status", "keys", "matched", "opened (s)", "first key (s)"):
        table.add_column(col)
    for r in results:
        table.add_row(r.pair.label, r.key_stream_id[:8], r.status, str(r.keys_delivered),
                      str(r.keys_matched),
                      f"{r.opened_s:.3f}" if r.opened_s is not None else "-",
                      f"{r.first_key_s:.3f}" if r.first_key_s is not None else "-")
    recent = Table(title="recent events", show_header=True, expand=False)
    for col in ("t (ms)", "node", "element", "event"):
        recent.add_column(col)
    shown = [e for e in list(mem.events)[-400:]
             if e.type not in (EventType.link_block, EventType.key_requested)][-8:]
    for e in shown:
        recent.add_row(f"{(e.t - t0) * 1000:.0f}", e.node or "-", e.element, e.type.value)
    return Group(table, recent)


async def run_embedded_demo(opts: DemoOptions, console: Console | None = None
                            ) -> dict[str, Any]:
    """Run the scenario in one process; write the outputs; return the summary."""
    console = console or Console()
    out = ensure_private_dir(opts.out)
    for stale in ("events.jsonl", "keyplane.db", "keyplane.db-wal", "keyplane.db-shm"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "state", ignore_errors=True)
    topo = opts.topology
    pairs = opts.pairs or default_pairs(topo)
    clock = RealClock()
    mem = MemorySink()
    jsonl = JsonlSink(out / "events.jsonl")
    events = EventStream(clock, [mem, jsonl])
    db = await Database.open(sqlite_url(out / "keyplane.db"))
    bus = MemoryBus()
    ctx = RuntimeContext(topology=topo, bus=bus, db=db, clock=clock, events=events,
                         state_dir=out / "state", seed=opts.seed)
    results = [PairResult(p) for p in pairs]
    stall_s = opts.stall_s
    if stall_s is None:
        stall_s = opts.timeout_s * (3 if opts.eve_link else 1)
    t0 = clock.now()
    ent_task: asyncio.Task[list[dict[str, Any]]] | None = None
    try:
        async with Embedded(ctx) as emb:
            async def eve() -> None:
                if opts.eve_link is None:
                    return
                # mid-run: counted from the moment every pair has its first key (each
                # session is routed and keying), so a slow start on a loaded machine does
                # not put the eavesdropper on the link before the sessions chose their paths
                await asyncio.gather(*(r.keying.wait() for r in results))
                await asyncio.sleep(opts.eve_after_s)
                # the link runs in a worker process: its runner takes commands on the bus
                reply = await bus.request(
                    control_topic(opts.eve_link),
                    LinkCommand(link_id=opts.eve_link, action="eve", position_km=0.0,
                                fraction=1.0), timeout_s=opts.command_timeout_s)
                if not isinstance(reply, LinkCommandReply) or not reply.ok:
                    raise KeyplaneError(f"--eve: link {opts.eve_link} refused the eavesdropper")
                events.emit(EventType.alarm, "demo", kind="eavesdropper_inserted",
                            link=opts.eve_link)

            runs = [run_pair(p, ServiceEndpoint(p.a, emb.km(topo.application(p.a).node),
                                                _caller(topo, p.a)),
                             ServiceEndpoint(p.b, emb.km(topo.application(p.b).node),
                                             _caller(topo, p.b)),
                             keys=opts.keys, chunk_bytes=opts.chunk_bytes,
                             interval_s=opts.interval_s, timeout_s=opts.timeout_s,
                             stall_s=stall_s, result=r, t0=t0)
                    for p, r in zip(pairs, results, strict=True)]
            eve_task = asyncio.create_task(eve())
            # entanglement demands beside the key streams, through the nodes' API
            ent_task = asyncio.create_task(run_entanglement_asks(
                topo, {n: node.entanglement for n, node in emb.nodes.items()},
                entanglement_asks(topo), timeout_s=opts.timeout_s))
            if opts.live and console.is_terminal:
                with Live(_view(results, mem, t0), console=console, refresh_per_second=8,
                          transient=False) as live:
                    gathered = asyncio.gather(*runs)
                    while not gathered.done():
                        live.update(_view(results, mem, t0))
                        await asyncio.wait({gathered}, timeout=LIVE_REFRESH_S)
                    await gathered
                    live.update(_view(results, mem, t0))
            else:
                await asyncio.gather(*runs)
            eve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await eve_task
            entanglement = await ent_task
            # let the closes reach Admission Control and every KM on the paths
            closed = {r.key_stream_id for r in results if r.status == "closed"}
            for sid in closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(mem.wait_for(_closed_by_admission(sid)),
                                           opts.close_wait_s)
    finally:
        if ent_task is not None and not ent_task.done():  # the key streams failed first
            ent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ent_task
        jsonl.close()
        await bus.close()
        await db.close()
    evs = list(mem.events)
    summary = summarize(topo, results, evs, seed=opts.seed, mode="embedded")
    if entanglement:
        summary["entanglement"] = entanglement
        for line in entanglement_lines(summary):  # beside the key streams the CLI prints
            console.print(line, highlight=False)
    write_private(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    render_timeline(evs, out)
    restrict(out)  # the timeline's files, written by matplotlib: owner-only too
    return summary
