"""The ``keyplane`` command.

Exit codes: 0 success, 1 runtime failure, 2 bad input (invalid topology, unknown node,
bad option), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from keyplane.cli_experiments import demo, sweep
from keyplane.cli_support import (
    AdvertiseOpt,
    BindHostOpt,
    BusOpt,
    DangerBusOpt,
    DbOpt,
    LogFormatOpt,
    NatsOpt,
    OpsOpt,
    StateOpt,
    TopologyOpt,
    UnqualifiedOpt,
    VerboseOpt,
    _bus_ready,
    _bus_security,
    _db_url,
    _Keyplane,
    _load,
    _logging,
    _ops_address,
    _ops_for,
    _print_ops,
    _run_process,
    _with_etsi015,
    _with_ports,
    bad_config_exits,
    console,
)
from keyplane.fileperms import ensure_private_dir, write_private
from keyplane.heap import importing

if TYPE_CHECKING:  # imported lazily at run time: `keyplane --help` stays fast
    from keyplane.config import Topology
    from keyplane.lifecycle import ProcessControl
    from keyplane.logsetup import LogFormat

__all__ = ["app", "main"]

app = typer.Typer(name="keyplane", no_args_is_help=True, add_completion=False, cls=_Keyplane,
                  help="Control and key management plane for QKD networks "
                       "(Lopez et al., IEEE Network 2025) over an emulated QKD layer.")


@app.command()
def validate(topology: Annotated[Path, typer.Argument(help="Topology YAML file.")]) -> None:
    """Check a topology file; print a summary or every problem (exit 2)."""
    topo = _load(topology)
    Console().print(f"[green]ok[/green] {topo.name}: {len(topo.nodes)} nodes, "
                    f"{len(topo.links)} links, {len(topo.users)} users, "
                    f"{len(topo.applications)} applications")


BusHostOpt = Annotated[list[str] | None, typer.Option(
    "--bus-host", help="A DNS name or IP of the NATS server for its certificate "
                       "(repeatable; localhost and 127.0.0.1 are always in).")]


@app.command()
def certs(topology: TopologyOpt,
          out: Annotated[Path, typer.Option(
              "--out", "-o", help="Where to write them (kept if present).")
          ] = Path("state/certs"),
          days: Annotated[int, typer.Option(help="Validity of new certificates, days.")
                          ] = 825,
          bus_host: BusHostOpt = None) -> None:
    """Make a CA and every certificate of the network: KMs, SAEs, controller, operator,
    nats-server, and each element's bus signing key."""
    from keyplane.certs import ensure_network_certs

    topo = _load(topology)
    issued = ensure_network_certs(topo, out, days=days, bus_hosts=tuple(bus_host or ()))
    console.print(f"CA {issued.ca.cert}; {len(issued.kms)} KM, {len(issued.saes)} SAE, "
                  f"controller, operator and nats-server certificates and "
                  f"{len(issued.signing or {})} signing keys under {out}")


@app.command("nats-config")
def nats_config(topology: TopologyOpt,
                certs_dir: Annotated[Path, typer.Option(
                    "--certs", help="Certificates directory (made if absent, as by "
                                    "'keyplane certs').")] = Path("state/certs"),
                out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it.")
                               ] = Path("nats.conf"),
                listen: Annotated[str, typer.Option(
                    help="HOST:PORT nats-server listens on.")] = "127.0.0.1:4222",
                bus_host: BusHostOpt = None) -> None:
    """Write the nats-server configuration for a topology: TLS with client certificates of
    the keyplane CA and per-element subject permissions (see docs/bus.md)."""
    from keyplane.bus.natsconf import render_nats_config
    from keyplane.certs import ensure_network_certs

    topo = _load(topology)
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        console.print(f"[red]error:[/red] --listen must be HOST:PORT, not {listen!r}")
        raise typer.Exit(2)
    ensure_network_certs(topo, certs_dir, bus_hosts=tuple(bus_host or ()))
    write_private(out, render_nats_config(topo, certs_dir, host=host, port=int(port_text)))
    console.print(f"wrote {out}: {len(topo.nodes)} KMs, control plane and operator; run "
                  f"nats-server -c {out}")


@app.command()
def run(topology: TopologyOpt = Path("examples/paper_poc.yaml"), state: StateOpt = Path("state"),
        db: DbOpt = None, ops: OpsOpt = "127.0.0.1:0",
        dashboard_controls: Annotated[bool, typer.Option(
            help="Offer the dashboard's cut / eavesdrop / restore buttons (a loopback demo; "
                 "turn off when the operations address is reachable by others).")] = True,
        etsi015_unqualified: UnqualifiedOpt = False, verbose: VerboseOpt = False,
        log_format: LogFormatOpt = "text") -> None:
    """Run every element of the network in this process (embedded mode) until Ctrl-C;
    serve its dashboard at <ops>/dashboard/."""
    with importing():  # the whole runtime, with the collector paused (keyplane.heap)
        from keyplane.bus import MemoryBus
        from keyplane.dashboard.service import Dashboard
        from keyplane.events import EventStream, JsonlSink
        from keyplane.logsetup import NotableEvents
        from keyplane.ops.surface import serve_operations
        from keyplane.runtime import Embedded, RuntimeContext
        from keyplane.store import Database

    topo = _with_etsi015(_load(topology), etsi015_unqualified)
    ops_at = _ops_address(ops)
    _logging(verbose, log_format)
    ensure_private_dir(state)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.clock import RealClock

        clock = RealClock()
        events = EventStream(clock, [JsonlSink(state / "events.jsonl"), NotableEvents()])
        database = await Database.open(_db_url(db, state))
        bus = MemoryBus()
        proc_ops = _ops_for("run", bus, database)
        ctx = RuntimeContext(topology=topo, bus=bus, db=database, clock=clock, events=events,
                             state_dir=state, ops=proc_ops)
        started = asyncio.Event()
        proc_ops.add_readiness_check("network", started.is_set)
        try:
            dashboard = Dashboard(topo, bus, events=events, controls=dashboard_controls)
            async with serve_operations(proc_ops, ops_at, bus=bus, dashboard=dashboard
                                        ) as ops_server, Embedded(ctx):
                started.set()
                _print_ops(ops_server, proc_ops)
                pc.ready(f"keyplane running: {len(topo.nodes)} nodes; endpoints in "
                         f"{state / 'endpoints.json'}; Ctrl-C to stop")
                await pc.serve_until_stopped()
        finally:
            await bus.close()
            await database.close()
            events.close()

    _run_process(main_)


@app.command()
def controller(topology: TopologyOpt, bus: NatsOpt,
               state: StateOpt = Path("state"), db: DbOpt = None,
               elements: Annotated[str, typer.Option(
                   help="Comma-separated subset of sdn,routing,monitoring,access,admission "
                        "(each element can run in its own process).")] = "",
               ops: OpsOpt = "127.0.0.1:0",
               dashboard_controls: Annotated[bool, typer.Option(
                   help="Offer the dashboard's cut / eavesdrop / restore buttons (off: "
                        "operators use 'keyplane link').")] = False,
               northbound_port: Annotated[int, typer.Option(
                   "--northbound-port", min=0, max=65535,
                   help="Port of the SDN Controller's northbound ETSI 015 view (0: a free "
                        "one, written to endpoints.json).")] = 0,
               danger_insecure_bus: DangerBusOpt = False,
               bind_host: BindHostOpt = "127.0.0.1", advertise_host: AdvertiseOpt = None,
               verbose: VerboseOpt = False, log_format: LogFormatOpt = "text") -> None:
    """Run the control plane (or some of its elements) as its own process; serve the
    network's dashboard at <ops>/dashboard/."""
    from keyplane.bus import connect
    from keyplane.control import ELEMENTS
    from keyplane.dashboard.service import Dashboard
    from keyplane.events import BusSink, EventStream, JsonlSink
    from keyplane.logsetup import NotableEvents
    from keyplane.ops.surface import serve_operations
    from keyplane.runtime import ControlRuntime, RuntimeContext
    from keyplane.store import Database

    topo = _load(topology)
    ops_at = _ops_address(ops)
    chosen = [e.strip() for e in elements.split(",") if e.strip()] or None
    if chosen and set(chosen) - set(ELEMENTS):
        console.print(f"[red]error:[/red] unknown elements {sorted(set(chosen) - set(ELEMENTS))};"
                      f" choose from {', '.join(ELEMENTS)}")
        raise typer.Exit(2)
    _logging(verbose, log_format)
    ensure_private_dir(state)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.certs import CONTROLLER_ID
        from keyplane.clock import RealClock

        clock = RealClock()
        security = _bus_security(bus, danger_insecure_bus, topo, state, "control",
                                 CONTROLLER_ID)
        b = await connect(bus, name="keyplane-controller", security=security)
        try:
            events = EventStream(clock, [JsonlSink(state / "events-controller.jsonl"),
                                         BusSink(b), NotableEvents()])
            database = await Database.open(_db_url(db, state))
            try:
                proc_ops = _ops_for("controller", b, database)
                ctx = RuntimeContext(topology=topo, bus=b, db=database, clock=clock,
                                     events=events, state_dir=state, ops=proc_ops,
                                     host=bind_host, advertise_host=advertise_host)
                ctx.ensure_certs()
                started = asyncio.Event()
                proc_ops.add_readiness_check("control_plane", started.is_set)
                dashboard = Dashboard(topo, b, events_from_bus=True,
                                      controls=dashboard_controls)
                control = ControlRuntime(ctx, elements=chosen, northbound_port=northbound_port)
                async with serve_operations(proc_ops, ops_at, bus=b, dashboard=dashboard
                                            ) as ops_server, control:
                    started.set()
                    _print_ops(ops_server, proc_ops)
                    pc.ready("keyplane controller ready")
                    await pc.serve_until_stopped(b)
            finally:
                events.close()
                await database.close()
        finally:
            await b.close()

    _run_process(main_)


@app.command()
def node(node_id: Annotated[str, typer.Option(
             "--id", help="Node id from the topology, or several separated by commas "
                          "(km1,km2,...): one process runs them all, each with its own bus "
                          "identity and servers (docs/operations.md).")],
         topology: TopologyOpt, bus: NatsOpt,
         state: StateOpt = Path("state"), db: DbOpt = None,
         ops: Annotated[str | None, typer.Option(
             "--ops", help="Where to serve /healthz, /readyz and /metrics: HOST:PORT or "
                           "'off' (default: 127.0.0.1 on the node's ports.ops from the "
                           "topology, else a free port, printed at start).")] = None,
         api_port: Annotated[int | None, typer.Option(
             "--api-port", "--etsi014-port", min=0, max=65535,
             help="Port of the ETSI 014 HTTPS server, which serves ETSI 004 under /etsi004 "
                  "(overrides the topology's ports.api; 0 or unset there: a free one).")
         ] = None,
         etsi015_port: Annotated[int | None, typer.Option(
             "--etsi015-port", min=0, max=65535,
             help="Port of the ETSI 015 agent (overrides the topology's ports.etsi015; 0: "
                  "a free one).")] = None,
         kek: Annotated[Path | None, typer.Option(
             "--kek", help="Key-encryption key file (0600) sealing this node's keys in the "
                           "database; default <state>/certs/km/<id>.kek.")] = None,
         kek_retired: Annotated[list[Path] | None, typer.Option(
             "--kek-retired", help="A key-encryption key this node sealed with before (a "
                                   "rotation; repeatable): rows sealed under it still open "
                                   "and are rewritten under --kek when they change.")] = None,
         danger_insecure_bus: DangerBusOpt = False,
         bind_host: BindHostOpt = "127.0.0.1", advertise_host: AdvertiseOpt = None,
         etsi015_unqualified: UnqualifiedOpt = False, verbose: VerboseOpt = False,
         log_format: LogFormatOpt = "text") -> None:
    """Run one node (its KM, QKD link ends and interfaces) as its own process, or several
    (--id km1,km2) in one."""
    from keyplane.bus import connect
    from keyplane.events import BusSink, EventStream, JsonlSink
    from keyplane.logsetup import NotableEvents
    from keyplane.ops.surface import serve_operations
    from keyplane.runtime import NodeRuntime, RuntimeContext
    from keyplane.store import Database

    topo = _with_etsi015(_load(topology), etsi015_unqualified)
    if "," in node_id:
        _node_group(node_id, topo, bus=bus, state=state, db=db, ops=ops,
                    ports=(api_port, etsi015_port), keks=(kek, kek_retired),
                    danger_insecure_bus=danger_insecure_bus, bind_host=bind_host,
                    advertise_host=advertise_host, verbose=verbose, log_format=log_format)
        return
    if node_id not in {n.id for n in topo.nodes}:
        console.print(f"[red]error:[/red] node {node_id!r} is not in {topology}")
        raise typer.Exit(2)
    topo = _with_ports(topo, node_id, api=api_port, etsi015=etsi015_port)
    ops_at = _ops_address(ops if ops is not None
                          else f"127.0.0.1:{topo.node(node_id).ports.ops or 0}")
    _logging(verbose, log_format)
    ensure_private_dir(state)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.clock import RealClock

        clock = RealClock()
        security = _bus_security(bus, danger_insecure_bus, topo, state, "km", node_id)
        b = await connect(bus, name=f"keyplane-node-{node_id}", security=security)
        try:
            events = EventStream(clock, [JsonlSink(state / f"events-{node_id}.jsonl"),
                                         BusSink(b), NotableEvents()])
            database = await Database.open(_db_url(db, state))
            try:
                if kek is not None or kek_retired:
                    database.keyring.use_file(
                        node_id, kek or state / "certs" / "km" / f"{node_id}.kek",
                        retired=tuple(kek_retired or ()))
                proc_ops = _ops_for(f"node-{node_id}", b, database)
                ctx = RuntimeContext(topology=topo, bus=b, db=database, clock=clock,
                                     events=events, state_dir=state, ops=proc_ops,
                                     bus_url=bus, bus_security=security, host=bind_host,
                                     advertise_host=advertise_host)
                ctx.ensure_certs()
                started = asyncio.Event()
                proc_ops.add_readiness_check("node", started.is_set)
                async with serve_operations(
                        proc_ops, ops_at, bus=b, nodes=[node_id],
                        links=[link.link_id for link in topo.links_of(node_id)]
                ) as ops_server, NodeRuntime(ctx, node_id, process_settings=pc.settings):
                    started.set()
                    _print_ops(ops_server, proc_ops)
                    pc.ready(f"keyplane node {node_id} ready")
                    await pc.serve_until_stopped(b)
            finally:
                events.close()
                await database.close()
        finally:
            await b.close()

    _run_process(main_)


def _node_group(text: str, topo: Topology, *, bus: str, state: Path, db: str | None,
                ops: str | None, ports: tuple[int | None, int | None],
                keks: tuple[Path | None, list[Path] | None], danger_insecure_bus: bool,
                bind_host: str, advertise_host: str | None, verbose: bool,
                log_format: LogFormat) -> None:
    """``keyplane node --id a,b,...``: check the list and the options, then run the nodes
    (keyplane.cli_nodes)."""
    from keyplane.cli_nodes import run_node_group
    from keyplane.nodegroup import parse_node_ids

    with bad_config_exits():
        ids = parse_node_ids(text, topo)
    if any(p is not None for p in ports) or keks[0] is not None or keks[1]:
        console.print("[red]error:[/red] with several --id, each node's ports come from the "
                      "topology (ports.api, ports.etsi015) and its key-encryption key from "
                      "<state>/certs/km/<id>.kek: --api-port, --etsi015-port, --kek and "
                      "--kek-retired are for one node", highlight=False)
        raise typer.Exit(2)
    ops_at = _ops_address(ops if ops is not None
                          else f"127.0.0.1:{topo.node(ids[0]).ports.ops or 0}")
    _logging(verbose, log_format)
    ensure_private_dir(state)
    run_node_group(ids, topo, bus=bus, state=state, db=db, ops_at=ops_at,
                   danger_insecure_bus=danger_insecure_bus, bind_host=bind_host,
                   advertise_host=advertise_host)


@app.command()
def device(link: Annotated[str, typer.Option("--link", help="Link id from the topology.")],
           topology: TopologyOpt, state: StateOpt = Path("state"),
           end: Annotated[str | None, typer.Option(
               help="Run only this node's end; the other end's device is reached over "
                    "--bus.")] = None,
           bus: BusOpt = None,
           host: Annotated[str, typer.Option(
               help="Address the device's ETSI 014 servers listen on.")] = "127.0.0.1",
           port: Annotated[list[str] | None, typer.Option(
               "--port", help="NODE=PORT for an end's ETSI 014 server (repeatable; "
                              "default: a free port).")] = None,
           seed: Annotated[int, typer.Option(help="Seed of the device's emulated link.")] = 1,
           time_scale: Annotated[float, typer.Option(
               "--time-scale", help="Emulated seconds per real second (1: hardware pace).")
           ] = 1.0,
           key_size: Annotated[int, typer.Option(
               "--key-size", help="The device's key size in bits.")] = 256,
           ops: OpsOpt = "127.0.0.1:0",
           danger_insecure_bus: DangerBusOpt = False,
           verbose: VerboseOpt = False, log_format: LogFormatOpt = "text") -> None:
    """Run an emulated QKD device for one link, serving ETSI 014 to the link's KMs.

    With --end and --bus the device end joins the secured bus with its node's credentials
    (from --state's certs): it speaks for that node's QKD module, on that node's subjects.
    """
    from keyplane.device import DeviceSettings, QkdDevice
    from keyplane.ops.surface import serve_operations
    from keyplane.physical.pool import emulation_settings_from_env

    topo = _load(topology)
    ports: dict[str, int] = {}
    for item in port or []:
        node_id, _, number = item.partition("=")
        if not number.isdigit() or not node_id:
            console.print(f"[red]error:[/red] --port {item!r}: expected NODE=PORT")
            raise typer.Exit(2)
        ports[node_id] = int(number)
    if key_size < 64 or key_size % 8 or not time_scale > 0:
        console.print("[red]error:[/red] --key-size must be a multiple of 8, at least 64, "
                      "and --time-scale positive")
        raise typer.Exit(2)
    links = {lk.link_id: lk for lk in topo.links}
    if link not in links:
        console.print(f"[red]error:[/red] --link: no link {link!r} in {topology} "
                      f"(links: {', '.join(links)})")
        raise typer.Exit(2)
    if end is not None and (end not in links[link].endpoints or bus is None):
        console.print(f"[red]error:[/red] --end must be one of {list(links[link].endpoints)} "
                      "and needs --bus (the other end's device is reached over it)")
        raise typer.Exit(2)
    if set(ports) - set(links[link].endpoints):
        console.print(f"[red]error:[/red] --port: {sorted(set(ports) - set(links[link].endpoints))}"
                      f" not an end of {link}")
        raise typer.Exit(2)
    ops_at = _ops_address(ops)
    _logging(verbose, log_format)
    state.mkdir(parents=True, exist_ok=True)

    security = (_bus_security(bus, danger_insecure_bus, topo, state, "km", end)
                if bus and end else None)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.bus import MemoryBus, connect
        from keyplane.ops import Ops

        b = (await connect(bus, name=f"keyplane-device-{link}", security=security)
             if bus else None)
        # without --bus the link's telemetry stays in the process, for its /metrics
        telemetry = b if b is not None else MemoryBus()
        settings = DeviceSettings(key_size_bits=key_size,
                                  emulation=emulation_settings_from_env(time_scale=time_scale))
        proc_ops = Ops(f"device-{link}" if end is None else f"device-{link}-{end}")
        if b is not None:
            proc_ops.add_readiness_check("bus", _bus_ready(b))
        started = asyncio.Event()
        proc_ops.add_readiness_check("device", started.is_set)
        try:
            async with serve_operations(proc_ops, ops_at, bus=telemetry, links=[link],
                                        nodes=[]) as ops_server, \
                    QkdDevice(topo, link, state_dir=state, end=end, bus=telemetry, host=host,
                              ports=ports, seed=seed, settings=settings, ops=proc_ops) as dev:
                started.set()
                _print_ops(ops_server)
                urls = " ".join(f"{n}={u}" for n, u in sorted(dev.urls.items()))
                pc.ready(f"keyplane device {link} ready: {urls}; endpoints in "
                         f"{state / f'device-{link}.json'}")
                await pc.serve_until_stopped(*([b] if b is not None else []))
        finally:
            await telemetry.close()

    _run_process(main_)


@app.command()
def status(state: StateOpt = Path("state"),
           ops: Annotated[str | None, typer.Option(
               "--ops", help="Ask this operations address (HOST:PORT or URL) of 'keyplane "
                             "run' or a controller instead of reading <state>/endpoints.json."
           )] = None,
           as_json: Annotated[bool, typer.Option(
               "--json", help="Print the state as JSON (the dashboard's /api/state).")
           ] = False,
           timeout: Annotated[float, typer.Option(
               help="Seconds to wait for the answer.", min=0.001)] = 10.0) -> None:
    """Show the nodes, links, sessions and alarms of a running network (exit 1 when nothing
    runs there)."""
    import json

    from keyplane.status import StatusUnavailable, dashboard_url, fetch_state, render_status

    try:
        snapshot = fetch_state(dashboard_url(state=state, ops=ops), timeout_s=timeout)
    except StatusUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(snapshot, indent=2))
    else:
        Console().print(render_status(snapshot))


# the commands that run an experiment into an --out folder (keyplane.cli_experiments)
app.command()(demo)
app.command()(sweep)


def _mount() -> None:
    from keyplane.api.cli import app as key_app
    from keyplane.deploy.cli import app as deploy_app
    from keyplane.physical.cli import app as link_app

    app.add_typer(link_app, name="link", help="Cut, degrade, restore or tap a quantum link.")
    app.add_typer(key_app, name="key",
                  help="Get keys over ETSI 014/004 as an SAE, with the certificates "
                       "'keyplane run' wrote.")
    app.add_typer(deploy_app, name="deploy",
                  help="Kubernetes manifests of the distributed mode, from a topology.")


_mount()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
