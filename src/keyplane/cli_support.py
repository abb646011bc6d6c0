"""The ``keyplane`` command's shared parts: the command group, common options, helpers.

Kept apart from :mod:`keyplane.cli` (the commands) so that module stays a list of commands;
nothing here imports a heavy package at module level (``keyplane --help`` stays fast).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from keyplane.errors import ConfigError, KeyplaneError
from keyplane.logsetup import LogFormat

if TYPE_CHECKING:  # imported lazily at run time: `keyplane --help` stays fast
    from keyplane.api.httpserver import HttpServer
    from keyplane.bus import Bus, BusSecurity
    from keyplane.config import Topology
    from keyplane.lifecycle import ProcessControl
    from keyplane.ops import Ops
    from keyplane.store import Database


def _flags_as_flags(command: Any, ctx: Any) -> None:
    """Show boolean flags as flags in --help (``--live/--no-live``, not ``<bool>``): typer
    prints a bool's type as its metavar; an empty metavar prints nothing."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_as_flags(sub, ctx)


class _Keyplane(TyperGroup):
    """The ``keyplane`` group: typer's, with flags shown as flags in every command's help."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_as_flags(command, ctx)
        return command

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


console = Console(stderr=True)

TopologyOpt = Annotated[Path, typer.Option("--topology", "-t", help="Topology YAML file.")]
StateOpt = Annotated[Path, typer.Option(
    "--state", "-s", help="State directory (certs, db, endpoints.json).")]
BusOpt = Annotated[str | None, typer.Option("--bus", help="Bus URL: memory:// or nats://host:port.")]
NatsOpt = Annotated[str, typer.Option("--bus", help="Bus URL: nats://host:port (or memory://).")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Debug logging: keyplane at DEBUG, libraries at INFO.")]
LogFormatOpt = Annotated[LogFormat, typer.Option(
    "--log-format", help="Log lines on stderr as text, or as json (one object per line).")]
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
BindHostOpt = Annotated[str, typer.Option(
    "--bind-host", help="Address the process's interface servers listen on (0.0.0.0 in a "
                        "container).")]
AdvertiseOpt = Annotated[str | None, typer.Option(
    "--advertise-host", help="Host name put in the URLs the process announces, e.g. its "
                             "Kubernetes Service's DNS name (default: --bind-host); its "
                             "certificate must name it.")]


@contextlib.contextmanager
def bad_config_exits() -> Iterator[None]:
    """A :class:`ConfigError` inside ends the command: its message, exit code 2."""
    try:
        yield
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _load(path: Path) -> Topology:
    from keyplane.config import load_topology

    with bad_config_exits():
        return load_topology(path)


def _with_etsi015(topo: Topology, unqualified: bool) -> Topology:
    """``topo`` with the ETSI 015 choices given on the command line."""
    if not unqualified:
        return topo
    settings = topo.etsi015.model_copy(update={"unqualified_top_member": True})
    return topo.model_copy(update={"etsi015": settings})


def _logging(verbose: bool, fmt: LogFormat = "text") -> None:
    """Quiet by default (warnings and notable events), debug with --verbose
    (keyplane.logsetup)."""
    from keyplane.logsetup import setup_logging

    setup_logging(verbose=verbose, fmt=fmt)


def _check_km_settings() -> None:
    """A bad ``KEYPLANE_KM_*`` variable stops the command before any I/O (exit 2, named):
    read later, by the KMs' RuntimeContext, it looked like a bus outage."""
    from keyplane.keymanager.settings import km_settings_from_env

    with bad_config_exits():
        km_settings_from_env()


def _run_process(main_coro: Callable[[ProcessControl], Awaitable[None]]) -> None:
    """Run ``main_coro(control)`` under :func:`keyplane.lifecycle.run_process`: signals stop
    it, shutdown is bounded, a bus that gives up ends it with exit code 1."""
    from keyplane.lifecycle import process_settings_from_env, run_process

    with bad_config_exits():
        settings = process_settings_from_env()
    _check_km_settings()
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
    ops.add_readiness_check("bus", _bus_ready(bus))
    ops.add_readiness_check("store", database.ping)
    return ops


def _bus_ready(bus: Bus) -> Callable[[], Awaitable[bool]]:
    """The readiness check of a process's bus connection."""

    async def bus_ready() -> bool:
        if not bus.connected:  # reconnecting: not ready, without waiting for a round trip
            return False
        await bus.flush()  # a round trip to the NATS server; immediate in memory
        return True

    return bus_ready


def _print_ops(server: HttpServer | None, ops: Ops | None = None) -> None:
    if server is not None:
        print(f"keyplane operations endpoints on {server.url} (/healthz, /readyz, /metrics)",
              flush=True)
    if ops is not None and "dashboard" in ops.urls:
        print(f"keyplane dashboard on {ops.urls['dashboard']}", flush=True)


def _with_ports(topo: Topology, node_id: str, **ports: int | None) -> Topology:
    """``topo`` with ports given on the command line in ``node_id``'s ``ports``."""
    given = {k: v for k, v in ports.items() if v is not None}
    if not given:
        return topo
    import yaml

    from keyplane.config import parse_topology

    data = topo.model_dump(mode="json")
    for n in data["nodes"]:
        if n["id"] == node_id:
            n["ports"].update({k: v or None for k, v in given.items()})  # 0: a free one
    with bad_config_exits():  # through the loader: the same messages as for the file itself
        return parse_topology(yaml.safe_dump(data), source="the topology with the ports given")


def _db_url(db: str | None, state: Path) -> str:
    from keyplane.store import sqlite_url

    return db or sqlite_url(state / "keyplane.db")
