"""``keyplane node --id km1,km2,...``: several nodes in one process (keyplane.nodegroup).

The command's options are checked by ``keyplane node`` (keyplane.cli); this runs the
process once they are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from keyplane.cli_support import (
    _bus_ready,
    _bus_security,
    _db_url,
    _print_ops,
    _run_process,
)
from keyplane.config import Topology

if TYPE_CHECKING:
    from keyplane.bus import Bus, BusSecurity
    from keyplane.lifecycle import ProcessControl

__all__ = ["run_node_group"]


def _all_ready(checks: list[Callable[[], Awaitable[bool]]]) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        return all([await check() for check in checks])
    return ready


def run_node_group(node_ids: list[str], topo: Topology, *, bus: str, state: Path,
                   db: str | None, ops_at: tuple[str, int] | None, danger_insecure_bus: bool,
                   bind_host: str, advertise_host: str | None) -> None:
    """Run ``node_ids`` in this process until stopped: one bus connection per node, each
    with its own identity; one database, event stream, operations server and link-worker
    pool. Prints ``keyplane node km1,km2 ready`` once every node announced itself."""
    label = ",".join(node_ids)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.bus import connect
        from keyplane.clock import RealClock
        from keyplane.events import BusSink, EventStream, JsonlSink
        from keyplane.logsetup import NotableEvents
        from keyplane.nodegroup import NodeGroup, NodeRoutedSink
        from keyplane.ops import Ops
        from keyplane.ops.surface import serve_operations
        from keyplane.runtime import RuntimeContext
        from keyplane.store import Database

        clock = RealClock()
        securities: dict[str, BusSecurity | None] = {
            n: _bus_security(bus, danger_insecure_bus, topo, state, "km", n) for n in node_ids}
        buses: dict[str, Bus] = {}
        async with contextlib.AsyncExitStack() as stack:
            for n in node_ids:  # each node joins the bus as itself
                buses[n] = await connect(bus, name=f"keyplane-node-{n}", security=securities[n])
                stack.push_async_callback(buses[n].close)
            first = buses[node_ids[0]]
            files = {n: JsonlSink(state / f"events-{n}.jsonl") for n in node_ids}
            published = {n: BusSink(buses[n]) for n in node_ids}
            events = EventStream(clock, [NodeRoutedSink(files, files[node_ids[0]]),
                                         NodeRoutedSink(published, published[node_ids[0]]),
                                         NotableEvents()])
            stack.callback(events.close)
            database = await Database.open(_db_url(db, state))
            stack.push_async_callback(database.close)
            proc_ops = Ops(f"node-{label}")
            proc_ops.add_readiness_check("bus", _all_ready([_bus_ready(b) for b in
                                                            buses.values()]))
            proc_ops.add_readiness_check("store", database.ping)
            ctx = RuntimeContext(topology=topo, bus=first, db=database, clock=clock,
                                 events=events, state_dir=state, ops=proc_ops, bus_url=bus,
                                 bus_security=securities[node_ids[0]], host=bind_host,
                                 advertise_host=advertise_host)
            ctx.ensure_certs()
            started = asyncio.Event()
            proc_ops.add_readiness_check("node", started.is_set)
            group = NodeGroup(ctx, node_ids, buses, securities=securities,
                              process_settings=pc.settings)
            metric_buses: dict[str, Bus] = {**group.link_buses(), **buses}
            async with serve_operations(proc_ops, ops_at, bus=first, nodes=node_ids,
                                        links=group.links, buses=metric_buses
                                        ) as ops_server, group:
                started.set()
                _print_ops(ops_server, proc_ops)
                pc.ready(f"keyplane node {label} ready")
                await pc.serve_until_stopped(*buses.values())

    _run_process(main_)
