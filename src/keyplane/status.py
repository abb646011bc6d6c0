"""``keyplane status``: nodes, links, sessions and alarms of a running network.

It asks the dashboard of the process that watches the whole network (``keyplane run``, or
``keyplane controller`` in distributed mode) for its JSON state (``/dashboard/api/state``,
:meth:`keyplane.dashboard.view.NetworkView.snapshot`). Where that is comes from a state
folder's ``endpoints.json`` (``operations.dashboard``, written by the running process) or
from the controller's operations address (``--ops HOST:PORT``).

Failures are :class:`StatusUnavailable` with a sentence an operator can act on (nothing
running there, a node process that serves no dashboard, a stale ``endpoints.json``); the
command prints it and exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.table import Table

from keyplane.errors import KeyplaneError

__all__ = ["StatusUnavailable", "dashboard_url", "fetch_state", "render_status"]

STATE_PATH = "api/state"


class StatusUnavailable(KeyplaneError):
    """No running network answered where ``keyplane status`` looked."""


def dashboard_url(*, state: Path | None = None, ops: str | None = None) -> str:
    """The dashboard's base URL, from ``ops`` (``HOST:PORT`` or a URL) or ``state``.

    Raises:
        StatusUnavailable: ``state`` holds no endpoints.json, or one without a dashboard.
    """
    if ops is not None:
        base = ops if "://" in ops else f"http://{ops}"
        return base.rstrip("/") + "/dashboard/"
    assert state is not None
    path = state / "endpoints.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StatusUnavailable(
            f"nothing is running with state folder {state}: {path} does not exist (start "
            f"'keyplane run -s {state}', or give a controller's --ops HOST:PORT)") from None
    except (OSError, ValueError) as exc:
        raise StatusUnavailable(f"cannot read {path}: {exc}") from None
    url = (doc.get("operations") or {}).get("dashboard") if isinstance(doc, dict) else None
    if not isinstance(url, str):
        raise StatusUnavailable(
            f"{path} names no dashboard: the process that wrote it serves none (started "
            f"with --ops off?); give its controller's --ops HOST:PORT")
    return url


def fetch_state(url: str, *, timeout_s: float = 10.0,
                transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """GET the dashboard's state at ``url`` (its base URL).

    Args:
        url: the dashboard's base URL (:func:`dashboard_url`).
        timeout_s: bound on connecting and on the answer.
        transport: an httpx transport (tests); the network by default.

    Raises:
        StatusUnavailable: nothing answers there, or it is not a keyplane dashboard.
    """
    target = url.rstrip("/") + "/" + STATE_PATH
    try:
        with httpx.Client(transport=transport, timeout=timeout_s) as client:
            r = client.get(target)
    except httpx.ConnectError:
        raise StatusUnavailable(f"nothing answers at {url}: no keyplane process is running "
                                f"there (a stale endpoints.json?)") from None
    except httpx.HTTPError as exc:
        raise StatusUnavailable(f"{url} did not answer: {type(exc).__name__}: {exc}") from None
    if r.status_code == 404:
        raise StatusUnavailable(
            f"{url} serves no dashboard: a node process? Point at 'keyplane run' or the "
            f"controller")
    if r.status_code != 200:
        raise StatusUnavailable(f"{target} answered HTTP {r.status_code}")
    try:
        doc = r.json()
    except ValueError:
        raise StatusUnavailable(f"{target} did not answer JSON") from None
    if not isinstance(doc, dict) or not {"nodes", "links", "sessions"} <= set(doc):
        raise StatusUnavailable(f"{target} is not a keyplane dashboard state")
    return doc


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mbit/s"
    if bps >= 1e3:
        return f"{bps / 1e3:.1f} kbit/s"
    return f"{bps:.0f} bit/s"


def _qber(q: float | None) -> str:
    return "-" if q is None else f"{100 * q:.2f} %"


def render_status(state: dict[str, Any]) -> RenderableType:
    """The state as tables: nodes, links, sessions, alarms."""
    nodes = Table(title=f"{state.get('network', '?')}: nodes (t = {state.get('t', 0):.1f} s)")
    for col in ("node", "name", "KM telemetry"):
        nodes.add_column(col)
    for n in state["nodes"]:
        ago = n.get("reported_s_ago")
        nodes.add_row(n["id"], n.get("name", ""),
                      "no report yet" if ago is None else f"{ago:.1f} s ago")
    links = Table(title="links")
    for col in ("link", "state", "SKR", "QBER", "key store", "sessions", "alarm"):
        links.add_column(col)
    for lk in state["links"]:
        store = ", ".join(f"{node} {bits / 8192:.1f} KiB"
                          for node, bits in sorted(lk.get("store_bits", {}).items())) or "-"
        links.add_row(lk["id"], lk.get("state", "?"), _rate(lk.get("skr_bps")),
                      _qber(lk.get("qber")), store, str(lk.get("sessions", 0)),
                      lk.get("alarm") or "")
    sessions = Table(title="sessions")
    for col in ("session", "pair", "path", "state", "keys", "keys/s"):
        sessions.add_column(col)
    for s in state["sessions"]:
        sessions.add_row(s["id"][:8], s.get("pair", ""), " -> ".join(s.get("path") or ["-"]),
                         s.get("state", "?"), str(s.get("keys", 0)),
                         f"{s.get('keys_per_s', 0.0):.1f}")
    alarms = Table(title="active alarms")
    for col in ("link", "kind", "severity", "QBER", "message"):
        alarms.add_column(col)
    for a in state.get("alarms", []):
        alarms.add_row(a.get("link", "?"), a.get("kind", "?"), a.get("severity", ""),
                       _qber(a.get("qber")), a.get("message", ""))
    parts: list[RenderableType] = [nodes, links, sessions]
    parts.append(alarms if state.get("alarms") else "no active alarm")
    return Group(*parts)
