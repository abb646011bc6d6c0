"""``keyplane key ...``: ETSI 014 and 004 calls as an SAE, from the shell.

Reads ``STATE_DIR/endpoints.json`` and the SAE's certificate written by ``keyplane run``
(see :mod:`keyplane.api.client`). Results go to stdout as JSON (keys in Base64, as on the
wire), errors to stderr. Exit codes: 0 success, 1 the KM refused or failed (the HTTP code
or 004 status is printed), 2 bad input or missing state.

Mount in the main CLI with ``app.add_typer(keyplane.api.cli.app, name="key")``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from keyplane.api.client import (
    ApiError,
    ClientError,
    Etsi004Client,
    Etsi004StatusError,
    Etsi014Client,
    Key,
    QosParameters,
    TransportError,
)

__all__ = ["app"]

app = typer.Typer(name="key", no_args_is_help=True, add_completion=False,
                  help="Get keys as an SAE over ETSI GS QKD 014 / 004 (mutual TLS).")

StateOpt = Annotated[Path, typer.Option(
    "--state", "-s", envvar="KEYPLANE_STATE", help="State directory of `keyplane run`.")]
SaeArg = Annotated[str, typer.Argument(help="The calling SAE (its certificate is used).")]


def _emit(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _keys(keys: list[Key]) -> dict[str, Any]:
    return {"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.key).decode()}
                     for k in keys]}


@contextmanager
def _errors() -> Iterator[None]:
    """Turn SDK errors into a message on stderr and an exit code."""
    try:
        yield
    except ApiError as exc:
        typer.echo(json.dumps({"http_status": exc.status_code, "message": exc.message,
                               "details": exc.details}), err=True)
        raise typer.Exit(1) from None
    except Etsi004StatusError as exc:
        typer.echo(json.dumps({"status": int(exc.status), "name": exc.status.name}), err=True)
        raise typer.Exit(1) from None
    except TransportError as exc:
        typer.echo(f"error: cannot reach the KM: {exc}", err=True)
        raise typer.Exit(1) from None
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _with014(state: Path, sae: str, fn: Callable[[Etsi014Client], Any]) -> None:
    with _errors(), Etsi014Client.from_state(state, sae) as client:
        _emit(fn(client))


def _with004(state: Path, sae: str, fn: Callable[[Etsi004Client], Any]) -> None:
    with _errors(), Etsi004Client.from_state(state, sae) as client:
        _emit(fn(client))


@app.command("status")
def status(sae: SaeArg, slave: Annotated[str, typer.Argument(help="Slave SAE ID.")],
           state: StateOpt = Path("state")) -> None:
    """ETSI 014 Status of the keys from SAE (master) to SLAVE."""
    _with014(state, sae, lambda c: c.status(slave).model_dump(exclude_none=True))


@app.command("get")
def get(sae: SaeArg, slave: Annotated[str, typer.Argument(help="Slave SAE ID.")],
        number: Annotated[int | None, typer.Option(
            "--number", "-n", help="How many keys (default: 1).")] = None,
        size: Annotated[int | None, typer.Option("--size", help="Bits per key.")] = None,
        state: StateOpt = Path("state")) -> None:
    """ETSI 014 enc_keys: new keys for SAE (master) to share with SLAVE."""
    _with014(state, sae, lambda c: _keys(c.enc_keys(slave, number, size)))


@app.command("dec")
def dec(sae: SaeArg, master: Annotated[str, typer.Argument(help="Master SAE ID.")],
        key_ids: Annotated[list[str], typer.Argument(help="key_IDs from the master.")],
        state: StateOpt = Path("state")) -> None:
    """ETSI 014 dec_keys: the keys KEY_IDS that MASTER obtained for SAE (slave)."""
    _with014(state, sae, lambda c: _keys(c.dec_keys(master, key_ids)))


@app.command("open")
def open_(sae: SaeArg, destination: Annotated[str, typer.Argument(help="Peer SAE ID.")],
          key_stream_id: Annotated[str | None, typer.Option(
              "--ksid", help="Join the peer's stream (else open a new one).")] = None,
          chunk_size: Annotated[int, typer.Option("--chunk-size", help="Bytes per key.")] = 32,
          min_bps: Annotated[int, typer.Option(
              "--min-bps", help="QoS: guaranteed key rate, bit/s.")] = 0,
          max_bps: Annotated[int, typer.Option(
              "--max-bps", help="QoS: highest key rate, bit/s (0: no limit asked).")] = 0,
          priority: Annotated[int, typer.Option(
              "--priority", help="QoS: priority asked (the SLA caps it).")] = 0,
          timeout_ms: Annotated[int, typer.Option(
              "--timeout-ms", help="QoS: longest wait for a key, ms.")] = 5000,
          ttl_s: Annotated[int, typer.Option(
              "--ttl-s", help="QoS: key lifetime, s (0: none asked).")] = 0,
          state: StateOpt = Path("state")) -> None:
    """ETSI 004 OPEN_CONNECT from SAE to DESTINATION; prints Key_stream_ID and status."""
    try:
        qos = QosParameters(Key_chunk_size=chunk_size, Min_bps=min_bps, Max_bps=max_bps,
                            Priority=priority, Timeout=timeout_ms, TTL=ttl_s)
    except ValueError as exc:
        typer.echo(f"error: bad QoS: {exc}", err=True)
        raise typer.Exit(2) from None

    def call(c: Etsi004Client) -> dict[str, Any]:
        opened = c.open_connect(sae, destination, qos, key_stream_id)
        return {"Key_stream_ID": opened.key_stream_id, "status": 0 if opened.peer_connected
                else 1, "QoS": opened.qos.model_dump()}

    _with004(state, sae, call)


@app.command("getkey")
def getkey(sae: SaeArg, key_stream_id: Annotated[str, typer.Argument(help="Key_stream_ID.")],
           index: Annotated[int | None, typer.Option(
               "--index", "-i", help="Key index in the stream (default: the next).")] = None,
           state: StateOpt = Path("state")) -> None:
    """ETSI 004 GET_KEY: the key chunk at INDEX (the next one by default)."""

    def call(c: Etsi004Client) -> dict[str, Any]:
        chunk = c.get_key(key_stream_id, index)
        return {"index": chunk.index, "key_buffer": base64.b64encode(chunk.key).decode(),
                "metadata": chunk.metadata}

    _with004(state, sae, call)


@app.command("close")
def close(sae: SaeArg, key_stream_id: Annotated[str, typer.Argument(help="Key_stream_ID.")],
          state: StateOpt = Path("state")) -> None:
    """ETSI 004 CLOSE of SAE's side of the stream."""

    def call(c: Etsi004Client) -> dict[str, Any]:
        c.close_stream(key_stream_id)
        return {"status": 0}

    _with004(state, sae, call)
