"""The ``keyplane`` command.

Exit codes: 0 success, 1 runtime failure, 2 bad input (invalid topology, unknown node,
bad option), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from keyplane.errors import ConfigError, KeyplaneError
from keyplane.fileperms import ensure_private_dir, write_private

if TYPE_CHECKING:  # imported lazily at run time: `keyplane --help` stays fast
    from keyplane.api.httpserver import HttpServer
    from keyplane.bus import Bus, BusSecurity
    from keyplane.config import Topology
    from keyplane.lifecycle import ProcessControl
    from keyplane.ops import Ops
    from keyplane.store import Database

__all__ = ["app", "main"]

app = typer.Typer(name="keyplane", no_args_is_help=True, add_completion=False,
                  help="Control and key management plane for QKD networks "
                       "(Lopez et al., IEEE Network 2025) over an emulated QKD layer.")
console = Console(stderr=True)

TopologyOpt = Annotated[Path, typer.Option("--topology", "-t", help="Topology YAML file.")]
StateOpt = Annotated[Path, typer.Option(
    "--state", "-s", help="State directory (certs, db, endpoints.json).")]
BusOpt = Annotated[str | None, typer.Option("--bus", help="Bus URL: memory:// or nats://host:port.")]
UnqualifiedOpt = Annotated[bool, typer.Option(
    "--etsi015-unqualified",
    help="ETSI 015 agents answer {\"qkd_node\": ...} as TeraFlowSDN's QKD driver reads it, "
         "instead of RFC 7951's qualified member (overrides the topology's "
         "etsi015.unqualified_top_member).")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default: SQLite in the state dir).")]
DangerBusOpt = Annotated[bool, typer.Option(
    "--danger-insecure-bus",
    help="DANGER: connect to a plain NATS server without TLS, client certificate or message "
         "signatures (anyone who reaches it can read and forge every message). Logs a "
         "WARNING. Default: TLS with this element's certificate from <state>/certs.")]
OpsOpt = Annotated[str, typer.Option(
    "--ops", help="Where to serve /healthz, /readyz and /metrics over plain HTTP: HOST:PORT "
                  "(port 0: a free one, printed at start) or 'off'.")]


def _load(path: Path) -> Topology:
    from keyplane.config import load_topology

    try:
        return load_topology(path)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _with_etsi015(topo: Topology, unqualified: bool) -> Topology:
    """``topo`` with the ETSI 015 choices given on the command line."""
    if not unqualified:
        return topo
    settings = topo.etsi015.model_copy(update={"unqualified_top_member": True})
    return topo.model_copy(update={"etsi015": settings})


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_process(main_coro: Callable[[ProcessControl], Awaitable[None]]) -> None:
    """Run ``main_coro(control)`` under :func:`keyplane.lifecycle.run_process`: signals stop
    it, shutdown is bounded, a bus that gives up ends it with exit code 1."""
    from keyplane.lifecycle import process_settings_from_env, run_process

    try:
        settings = process_settings_from_env()
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        run_process(main_coro, settings)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyplaneError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except OSError as exc:  # e.g. an address in use, a state directory not writable
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _bus_security(url: str | None, danger_insecure: bool, topo: Topology, state: Path,
                  role: str, element_id: str) -> BusSecurity | None:
    """The element's bus identity from ``<state>/certs`` (made once if absent), or the
    insecure bus when asked for explicitly; None for the in-memory bus."""
    from keyplane.bus import BusCredentials, BusSecurity
    from keyplane.certs import ensure_network_certs

    if url is None or url.startswith("memory:"):
        return None
    if danger_insecure:
        return BusSecurity.danger_insecure("--danger-insecure-bus")
    certs = state / "certs"
    ensure_network_certs(topo, certs)
    return BusSecurity.load(BusCredentials.for_element(certs, role, element_id))


def _ops_address(text: str) -> tuple[str, int] | None:
    from keyplane.ops import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --ops: {exc}")
        raise typer.Exit(2) from None


def _ops_for(process: str, bus: Bus, database: Database) -> Ops:
    """The process's :class:`keyplane.ops.Ops`, with the bus and store readiness checks."""
    from keyplane.ops import Ops

    ops = Ops(process)

    async def bus_ready() -> bool:
        if not bus.connected:  # reconnecting: not ready, without waiting for a round trip
            return False
        await bus.flush()  # a round trip to the NATS server; immediate in memory
        return True

    ops.add_readiness_check("bus", bus_ready)
    ops.add_readiness_check("store", database.ping)
    return ops


def _print_ops(server: HttpServer | None) -> None:
    if server is not None:
        print(f"keyplane operations endpoints on {server.url} (/healthz, /readyz, /metrics)",
              flush=True)


def _db_url(db: str | None, state: Path) -> str:
    from keyplane.store import sqlite_url

    return db or sqlite_url(state / "keyplane.db")


@app.command()
def validate(topology: Annotated[Path, typer.Argument(help="Topology YAML file.")]) -> None:
    """Check a topology file; print a summary or every problem (exit 2)."""
    topo = _load(topology)
    console.print(f"[green]ok[/green] {topo.name}: {len(topo.nodes)} nodes, {len(topo.links)} "
                  f"links, {len(topo.users)} users, {len(topo.applications)} applications")


BusHostOpt = Annotated[list[str] | None, typer.Option(
    "--bus-host", help="A DNS name or IP of the NATS server for its certificate "
                       "(repeatable; localhost and 127.0.0.1 are always in).")]


@app.command()
def certs(topology: TopologyOpt,
          out: Annotated[Path, typer.Option("--out", "-o")] = Path("state/certs"),
          days: int = 825, bus_host: BusHostOpt = None) -> None:
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
        etsi015_unqualified: UnqualifiedOpt = False, verbose: bool = False) -> None:
    """Run every element of the network in this process (embedded mode) until Ctrl-C."""
    from keyplane.bus import MemoryBus
    from keyplane.events import EventStream, JsonlSink
    from keyplane.ops import ops_endpoints
    from keyplane.runtime import Embedded, RuntimeContext
    from keyplane.store import Database

    topo = _with_etsi015(_load(topology), etsi015_unqualified)
    ops_at = _ops_address(ops)
    _logging(verbose)
    ensure_private_dir(state)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.clock import RealClock

        clock = RealClock()
        events = EventStream(clock, [JsonlSink(state / "events.jsonl")])
        database = await Database.open(_db_url(db, state))
        bus = MemoryBus()
        proc_ops = _ops_for("run", bus, database)
        ctx = RuntimeContext(topology=topo, bus=bus, db=database, clock=clock, events=events,
                             state_dir=state, ops=proc_ops)
        started = asyncio.Event()
        proc_ops.add_readiness_check("network", started.is_set)
        try:
            async with ops_endpoints(proc_ops, ops_at) as ops_server, Embedded(ctx):
                started.set()
                _print_ops(ops_server)
                pc.ready(f"keyplane running: {len(topo.nodes)} nodes; endpoints in "
                         f"{state / 'endpoints.json'}; Ctrl-C to stop")
                await pc.serve_until_stopped()
        finally:
            await bus.close()
            await database.close()
            events.close()

    _run_process(main_)


@app.command()
def controller(topology: TopologyOpt, bus: Annotated[str, typer.Option("--bus")],
               state: StateOpt = Path("state"), db: DbOpt = None,
               elements: Annotated[str, typer.Option(
                   help="Comma-separated subset of sdn,routing,monitoring,access,admission "
                        "(each element can run in its own process).")] = "",
               ops: OpsOpt = "127.0.0.1:0", danger_insecure_bus: DangerBusOpt = False,
               verbose: bool = False) -> None:
    """Run the control plane (or some of its elements) as its own process."""
    from keyplane.bus import connect
    from keyplane.control import ELEMENTS
    from keyplane.events import BusSink, EventStream, JsonlSink
    from keyplane.ops import ops_endpoints
    from keyplane.runtime import ControlRuntime, RuntimeContext
    from keyplane.store import Database

    topo = _load(topology)
    ops_at = _ops_address(ops)
    chosen = [e.strip() for e in elements.split(",") if e.strip()] or None
    if chosen and set(chosen) - set(ELEMENTS):
        console.print(f"[red]error:[/red] unknown elements {sorted(set(chosen) - set(ELEMENTS))};"
                      f" choose from {', '.join(ELEMENTS)}")
        raise typer.Exit(2)
    _logging(verbose)
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
                                         BusSink(b)])
            database = await Database.open(_db_url(db, state))
            try:
                proc_ops = _ops_for("controller", b, database)
                ctx = RuntimeContext(topology=topo, bus=b, db=database, clock=clock,
                                     events=events, state_dir=state, ops=proc_ops)
                ctx.ensure_certs()
                started = asyncio.Event()
                proc_ops.add_readiness_check("control_plane", started.is_set)
                async with ops_endpoints(proc_ops, ops_at) as ops_server, \
                        ControlRuntime(ctx, elements=chosen):
                    started.set()
                    _print_ops(ops_server)
                    pc.ready("keyplane controller ready")
                    await pc.serve_until_stopped(b)
            finally:
                events.close()
                await database.close()
        finally:
            await b.close()

    _run_process(main_)


@app.command()
def node(node_id: Annotated[str, typer.Option("--id", help="Node id from the topology.")],
         topology: TopologyOpt, bus: Annotated[str, typer.Option("--bus")],
         state: StateOpt = Path("state"), db: DbOpt = None, ops: OpsOpt = "127.0.0.1:0",
         kek: Annotated[Path | None, typer.Option(
             "--kek", help="Key-encryption key file (0600) sealing this node's keys in the "
                           "database; default <state>/certs/km/<id>.kek.")] = None,
         danger_insecure_bus: DangerBusOpt = False,
         etsi015_unqualified: UnqualifiedOpt = False, verbose: bool = False) -> None:
    """Run one node (its KM, QKD link ends and interfaces) as its own process."""
    from keyplane.bus import connect
    from keyplane.events import BusSink, EventStream, JsonlSink
    from keyplane.ops import ops_endpoints
    from keyplane.runtime import NodeRuntime, RuntimeContext
    from keyplane.store import Database

    topo = _with_etsi015(_load(topology), etsi015_unqualified)
    ops_at = _ops_address(ops)
    if node_id not in {n.id for n in topo.nodes}:
        console.print(f"[red]error:[/red] node {node_id!r} is not in {topology}")
        raise typer.Exit(2)
    _logging(verbose)
    ensure_private_dir(state)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.clock import RealClock

        clock = RealClock()
        security = _bus_security(bus, danger_insecure_bus, topo, state, "km", node_id)
        b = await connect(bus, name=f"keyplane-node-{node_id}", security=security)
        try:
            events = EventStream(clock, [JsonlSink(state / f"events-{node_id}.jsonl"),
                                         BusSink(b)])
            database = await Database.open(_db_url(db, state))
            try:
                if kek is not None:
                    database.keyring.use_file(node_id, kek)
                proc_ops = _ops_for(f"node-{node_id}", b, database)
                ctx = RuntimeContext(topology=topo, bus=b, db=database, clock=clock,
                                     events=events, state_dir=state, ops=proc_ops,
                                     bus_url=bus, bus_security=security)
                ctx.ensure_certs()
                started = asyncio.Event()
                proc_ops.add_readiness_check("node", started.is_set)
                async with ops_endpoints(proc_ops, ops_at) as ops_server, \
                        NodeRuntime(ctx, node_id, process_settings=pc.settings):
                    started.set()
                    _print_ops(ops_server)
                    pc.ready(f"keyplane node {node_id} ready")
                    await pc.serve_until_stopped(b)
            finally:
                events.close()
                await database.close()
        finally:
            await b.close()

    _run_process(main_)


@app.command()
def device(link: Annotated[str, typer.Option("--link", help="Link id from the topology.")],
           topology: TopologyOpt, state: StateOpt = Path("state"),
           end: Annotated[str | None, typer.Option(
               help="Run only this node's end; the other end's device is reached over "
                    "--bus.")] = None,
           bus: BusOpt = None, host: str = "127.0.0.1",
           port: Annotated[list[str] | None, typer.Option(
               "--port", help="NODE=PORT for an end's ETSI 014 server (repeatable; "
                              "default: a free port).")] = None,
           seed: int = 1,
           time_scale: Annotated[float, typer.Option(
               "--time-scale", help="Emulated seconds per real second (1: hardware pace).")
           ] = 1.0,
           key_size: Annotated[int, typer.Option(
               "--key-size", help="The device's key size in bits.")] = 256,
           danger_insecure_bus: DangerBusOpt = False,
           verbose: bool = False) -> None:
    """Run an emulated QKD device for one link, serving ETSI 014 to the link's KMs.

    With --end and --bus the device end joins the secured bus with its node's credentials
    (from --state's certs): it speaks for that node's QKD module, on that node's subjects.
    """
    from keyplane.device import DeviceSettings, QkdDevice
    from keyplane.physical.pool import EmulationSettings

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
    _logging(verbose)
    state.mkdir(parents=True, exist_ok=True)

    security = (_bus_security(bus, danger_insecure_bus, topo, state, "km", end)
                if bus and end else None)

    async def main_(pc: ProcessControl) -> None:
        from keyplane.bus import connect

        b = (await connect(bus, name=f"keyplane-device-{link}", security=security)
             if bus else None)
        settings = DeviceSettings(key_size_bits=key_size,
                                  emulation=EmulationSettings(time_scale=time_scale))
        try:
            async with QkdDevice(topo, link, state_dir=state, end=end, bus=b, host=host,
                                 ports=ports, seed=seed, settings=settings) as dev:
                urls = " ".join(f"{n}={u}" for n, u in sorted(dev.urls.items()))
                pc.ready(f"keyplane device {link} ready: {urls}; endpoints in "
                         f"{state / f'device-{link}.json'}")
                await pc.serve_until_stopped(*([b] if b is not None else []))
        finally:
            if b is not None:
                await b.close()

    _run_process(main_)


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")
                        ] = Path("demo-out"),
         topology: TopologyOpt = Path("examples/paper_poc.yaml"),
         protocol: Annotated[str | None, typer.Option(
             help="Override every link's protocol: bb84-decoy or analytic.")] = None,
         length_km: Annotated[float | None, typer.Option(
             "--length-km", help="Override every link's length.")] = None,
         keys: Annotated[int, typer.Option(help="Keys each pair fetches.")] = 8,
         eve: Annotated[str | None, typer.Option(
             help="Put a full intercept-resend eavesdropper on this link id during the run "
                  "(e.g. km4-km5): the QBER alarm and the reroute or refusal show up.")] = None,
         eve_after_s: float = 1.0,
         distributed: Annotated[bool, typer.Option(
             "--distributed", help="One process per element over NATS and PostgreSQL.")] = False,
         nats: Annotated[str | None, typer.Option(
             help="--distributed: use this NATS URL instead of starting a server.")] = None,
         db: Annotated[str | None, typer.Option(
             help="--distributed: use this database URL instead of starting PostgreSQL.")
         ] = None,
         kill_km: Annotated[str | None, typer.Option(
             help="--distributed: SIGKILL this node's process mid-run (--kill-after-s after "
                  "every pair has its first key), then restart it.")
         ] = None,
         kill_after_s: float = 2.0,
         danger_insecure_bus: Annotated[bool, typer.Option(
             "--danger-insecure-bus",
             help="--distributed: DANGER: a plain nats-server, no TLS, no client "
                  "certificates, no signatures (logs a WARNING).")] = False,
         seed: int = 1,
         live: Annotated[bool, typer.Option(help="Live rich view while running.")] = True,
         verbose: bool = False) -> None:
    """Run the paper's proof of concept end to end and render its Fig. 4 timeline."""
    from keyplane.demo.run import (
        DemoOptions,
        apply_overrides,
        demo_problems,
        run_embedded_demo,
    )

    if protocol is not None and protocol not in ("bb84-decoy", "analytic"):
        console.print("[red]error:[/red] --protocol must be bb84-decoy or analytic, "
                      f"not {protocol!r}")
        raise typer.Exit(2)
    topo = _load(topology)
    try:
        topo = apply_overrides(topo, protocol=protocol, length_km=length_km)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if eve is not None and eve not in {link.link_id for link in topo.links}:
        console.print(f"[red]error:[/red] --eve: no link {eve!r} in {topology} "
                      f"(links: {', '.join(link.link_id for link in topo.links)})")
        raise typer.Exit(2)
    if kill_km is not None and kill_km not in {n.id for n in topo.nodes}:
        console.print(f"[red]error:[/red] --kill-km: no node {kill_km!r}")
        raise typer.Exit(2)
    if (kill_km or nats or db or danger_insecure_bus) and not distributed:
        console.print("[red]error:[/red] --kill-km, --nats, --db and --danger-insecure-bus "
                      "need --distributed")
        raise typer.Exit(2)
    if eve is not None and distributed:
        console.print("[red]error:[/red] --eve runs in the embedded demo; with --distributed "
                      "use 'keyplane link eve LINK --bus URL' against the running network")
        raise typer.Exit(2)
    if verbose:
        _logging(True)
    opts = DemoOptions(topology=topo, out=out, keys=keys, eve_link=eve, eve_after_s=eve_after_s,
                       seed=seed, live=live)
    out_console = Console()
    try:
        if distributed:
            from keyplane.demo.distributed import DistributedOptions, run_distributed_demo

            summary = asyncio.run(run_distributed_demo(
                opts, DistributedOptions.from_env(
                    nats_url=nats, db_url=db, kill_km=kill_km, kill_after_s=kill_after_s,
                    danger_insecure_bus=danger_insecure_bus), out_console))
        else:
            summary = asyncio.run(run_embedded_demo(opts, out_console))
    except KeyplaneError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    for s in summary["sessions"]:
        colour = "green" if s["all_keys_matched"] else "red"
        first = s["time_to_first_key_s"]
        out_console.print(
            f"[{colour}]{s['pair']}[/{colour}] path {' -> '.join(s['path'] or ['-'])}: "
            f"{s['keys_matched']}/{s['keys_delivered']} keys identical at both ends, "
            f"first key after {first:.3f} s" if first is not None else
            f"[{colour}]{s['pair']}[/{colour}] {s['status']} {s['error']}")
    out_console.print(f"events: {out / 'events.jsonl'}  timeline: {out / 'timeline.html'}, "
                      f"{out / 'timeline.png'}  summary: {out / 'summary.json'}")
    problems = demo_problems(summary, keys, eve)
    for problem in problems:
        console.print(f"[red]failed:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)


def _mount() -> None:
    from keyplane.api.cli import app as key_app
    from keyplane.physical.cli import app as link_app

    app.add_typer(link_app, name="link", help="Cut, degrade, restore or tap a quantum link.")
    app.add_typer(key_app, name="key",
                  help="Get keys over ETSI 014/004 as an SAE, with the certificates "
                       "'keyplane run' wrote.")


_mount()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
