"""``keyplane link cut|degrade|restore|eve|status LINK --bus tls://...``: drive link faults.

The command connects with the operator's bus credential from ``--certs`` (default
``state/certs``; ``keyplane link --certs DIR cut ...``), or, with ``--danger-insecure-bus``,
to a plain server.

Sends a :class:`~keyplane.physical.wire.LinkCommand` to the process running Alice's end of
the link (topic ``keyplane.control.link.<LINK>``) and prints its reply. Mount with
``app.add_typer(keyplane.physical.cli.app, name="link")``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keyplane.errors import BusError, KeyplaneError

if TYPE_CHECKING:  # imported when a command runs: `keyplane --help` loads no numpy or bus
    from keyplane.bus import BusSecurity
    from keyplane.physical.wire import LinkCommand, LinkCommandReply

__all__ = ["app", "send_command"]

app = typer.Typer(help="Cut, degrade, restore a quantum link or put an eavesdropper on it.",
                  no_args_is_help=True)

BusOpt = Annotated[str, typer.Option("--bus", help="bus URL, e.g. nats://127.0.0.1:4222")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="reply timeout in seconds")]
LinkArg = Annotated[str, typer.Argument(help="Link id from the topology, e.g. km4-km5.")]


_OPTIONS: dict[str, tuple[Path, bool]] = {}
"""The group options of the running invocation (set by :func:`_bus_options` every time)."""


@app.callback()
def _bus_options(
        certs: Annotated[Path, typer.Option(
            "--certs", help="Certificates directory with the operator's bus credential.")
        ] = Path("state/certs"),
        danger_insecure_bus: Annotated[bool, typer.Option(
            "--danger-insecure-bus", help="DANGER: a plain NATS server, no TLS, no "
                                          "certificate, no signature (logs a WARNING).")
        ] = False) -> None:
    _OPTIONS["bus"] = (certs, danger_insecure_bus)


def _operator_security() -> BusSecurity:
    from keyplane.bus import BusCredentials, BusSecurity
    from keyplane.certs import OPERATOR_ID

    certs, danger = _OPTIONS.get("bus", (Path("state/certs"), False))
    if danger:
        return BusSecurity.danger_insecure("--danger-insecure-bus")
    return BusSecurity.load(BusCredentials.for_element(certs, "operator", OPERATOR_ID))


async def send_command(bus_url: str, command: LinkCommand, timeout_s: float = 5.0, *,
                       security: BusSecurity | None = None) -> LinkCommandReply:
    """Send ``command`` over the bus at ``bus_url`` and return the link's reply.

    Args:
        security: the sender's bus identity (default: the operator's from ``state/certs``).

    Raises:
        BusError: no runner answers (wrong link id, Alice's node not running) or timeout.
    """
    from keyplane.bus import connect
    from keyplane.physical.wire import LinkCommandReply, control_topic

    bus = await connect(bus_url, name="keyplane-link-cli",
                        security=security or _operator_security())
    try:
        reply = await bus.request(control_topic(command.link_id), command, timeout_s=timeout_s)
    finally:
        await bus.close()
    if not isinstance(reply, LinkCommandReply):
        raise BusError(f"unexpected reply {reply.KIND}")
    return reply


def _command(**fields: Any) -> LinkCommand:
    from keyplane.physical.wire import LinkCommand

    return LinkCommand(**fields)


def _run(bus: str, command: LinkCommand, timeout: float) -> None:
    try:
        reply = asyncio.run(send_command(bus, command, timeout,
                                         security=_operator_security()))
    except KeyplaneError as exc:  # BusError, or ConfigError for a missing credential
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    eve = f", eavesdropper on {reply.eavesdropper_fraction:.0%} of pulses" \
        if reply.eavesdropper_fraction else ""
    typer.echo(f"{reply.link_id}: {reply.state} (extra loss {reply.extra_loss_db} dB{eve}; "
               f"{reply.delivered_blocks} blocks delivered, {reply.aborted_blocks} aborted)")
    if not reply.ok:
        typer.echo(f"refused: {reply.message}", err=True)
        raise typer.Exit(1)


@app.command()
def cut(link: LinkArg, bus: BusOpt, timeout: TimeoutOpt = 5.0) -> None:
    """Break the fibre of LINK."""
    _run(bus, _command(link_id=link, action="cut"), timeout)


@app.command()
def degrade(link: LinkArg, extra_loss_db: Annotated[float, typer.Argument(
                min=0.0, help="Extra loss on the fibre, dB.")], bus: BusOpt,
            timeout: TimeoutOpt = 5.0) -> None:
    """Add EXTRA_LOSS_DB of loss to LINK."""
    _run(bus, _command(link_id=link, action="degrade", extra_loss_db=extra_loss_db),
         timeout)


@app.command()
def restore(link: LinkArg, bus: BusOpt, timeout: TimeoutOpt = 5.0) -> None:
    """Repair LINK (no cut, no extra loss)."""
    _run(bus, _command(link_id=link, action="restore"), timeout)


@app.command()
def eve(link: LinkArg, bus: BusOpt,
        position_km: Annotated[float, typer.Option(
            min=0.0, help="Where she taps the fibre, km from the link's first end.")] = 0.0,
        fraction: Annotated[float, typer.Option(
            min=0.0, max=1.0, help="Share of the pulses she intercepts (0 removes her).")
        ] = 1.0,
        timeout: TimeoutOpt = 5.0) -> None:
    """Put an intercept-resend eavesdropper on LINK (--fraction 0 removes her)."""
    _run(bus, _command(link_id=link, action="eve", position_km=position_km,
                          fraction=fraction), timeout)


@app.command()
def status(link: LinkArg, bus: BusOpt, timeout: TimeoutOpt = 5.0) -> None:
    """Show LINK's state."""
    _run(bus, _command(link_id=link, action="status"), timeout)
