"""nats-server configuration for a topology: TLS, client certificates, per-element permissions.

``keyplane nats-config -t topo.yaml --certs DIR -o nats.conf`` writes it; the distributed
demo and the test fixtures run nats-server with it. What it grants (topic names in
:mod:`keyplane.bus`), each element identified by the subject of its client certificate
(``tls { verify_and_map }``):

* **KM N** publishes on its neighbours' relay topics; Access and Admission Control and node
  announcements; its links' ``qkd.L.>`` and telemetry; its KM telemetry, ETSI 015
  notifications and events; replies; its applications' entanglement demands. It subscribes
  to its own ``km.N.*`` topics; its links' ``qkd.L.>``, control and telemetry topics; its KM
  telemetry; alarms; its own inbox; its own entanglement deliveries.
* **control** publishes on every KM's config and control topic (configuration, deletion),
  ``keyplane.control.>``, alarms and events; replies. It subscribes to
  ``keyplane.control.>``, telemetry, alarms, ETSI 015 notifications, events, its inbox.
* **operator** publishes link commands and events; subscribes to telemetry, alarms,
  events and its inbox.

No one may subscribe to ``>`` (or to any other KM's topics), no KM may publish configuration
or deletion, and a client without a certificate from the keyplane CA, or with one whose
subject is not listed (an SAE's, say), is refused. Replies go to the requester's own inbox
(``_INBOX.<role>.<id>``), which only it can read; responders answer through
``allow_responses``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from keyplane.bus import topics
from keyplane.bus.security import inbox_prefix
from keyplane.certs import CONTROLLER_ID, OPERATOR_ID, element_subject
from keyplane.config import Topology

__all__ = [
    "NatsUser",
    "control_user",
    "km_user",
    "operator_user",
    "render_nats_config",
    "topology_users",
]

EVENTS = "keyplane.events.>"
ALARMS = "keyplane.alarms.>"
TELEMETRY = "keyplane.telemetry.>"
ENTANGLEMENT = "keyplane.control.entanglement"
"""The entanglement service's request topic; a node's deliveries arrive below it
(``keyplane.control.entanglement.service.delivery_topic``)."""


@dataclass(frozen=True)
class NatsUser:
    """One element's entry: its certificate subject and what it may publish and subscribe."""

    subject: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True
    comment: str = field(default="", compare=False)


def _qkd(link_id: str) -> str:
    return f"keyplane.qkd.{link_id}.>"


def _link_control(link_id: str) -> str:
    return f"keyplane.control.link.{link_id}"


def km_user(topology: Topology, node: str) -> NatsUser:
    """The KM (node process) of ``node``: its own topics and its neighbours' relay topics."""
    links = topology.links_of(node)
    neighbours = sorted({e for link in links for e in link.endpoints} - {node})
    link_ids = [link.link_id for link in links]
    publish = [
        *(topics.km_relay(nb) for nb in neighbours),
        topics.ACCESS, topics.ADMISSION, topics.SDN_NODES,
        *(_qkd(lid) for lid in link_ids),
        *(topics.link_telemetry(lid) for lid in link_ids),
        topics.km_telemetry(node), topics.sdn_notifications(node), EVENTS,
        ENTANGLEMENT,
    ]
    subscribe = [
        topics.km_config(node), topics.km_relay(node), topics.km_control(node),
        *(_qkd(lid) for lid in link_ids),
        *(_link_control(lid) for lid in link_ids),
        *(topics.link_telemetry(lid) for lid in link_ids),
        topics.km_telemetry(node), ALARMS, inbox_prefix("km", node) + ".>",
        f"{ENTANGLEMENT}.delivery.{node}",
    ]
    return NatsUser(element_subject("km", node), tuple(publish), tuple(subscribe),
                    comment=f"KM {node} (neighbours: {', '.join(neighbours) or 'none'})")


def control_user() -> NatsUser:
    """The control plane (every control-plane process presents the controller certificate)."""
    publish = [topics.km_config("*"), topics.km_control("*"), "keyplane.control.>", ALARMS,
               EVENTS]
    subscribe = ["keyplane.control.>", TELEMETRY, ALARMS, topics.sdn_notifications("*"),
                 EVENTS, inbox_prefix("control", CONTROLLER_ID) + ".>"]
    return NatsUser(element_subject("control", CONTROLLER_ID), tuple(publish),
                    tuple(subscribe), comment="control plane (configuration and deletion)")


def operator_user() -> NatsUser:
    """An operator: link fault commands (``keyplane link``), and observing."""
    return NatsUser(element_subject("operator", OPERATOR_ID),
                    ("keyplane.control.link.*", EVENTS),
                    (TELEMETRY, ALARMS, EVENTS, inbox_prefix("operator", OPERATOR_ID) + ".>"),
                    allow_responses=False, comment="operator (keyplane link ...)")


def topology_users(topology: Topology) -> list[NatsUser]:
    """Every element of ``topology``: one KM per node, the control plane, the operator."""
    return [*(km_user(topology, n.id) for n in topology.nodes), control_user(),
            operator_user()]


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_nats_config(topology: Topology, certs_dir: str | Path, *, host: str = "127.0.0.1",
                       port: int = 4222, tls_timeout_s: float = 10.0,
                       extra_users: Iterable[NatsUser] = ()) -> str:
    """The nats-server configuration text for ``topology`` with the certificates under
    ``certs_dir`` (``ca.pem`` and ``nats/server.{pem,key}``, see :mod:`keyplane.certs`).

    ``tls_timeout_s`` bounds the TLS handshake and the CONNECT that follows; the default
    holds on a loaded machine. ``extra_users`` adds entries (e.g. a test harness).
    """
    base = Path(certs_dir).resolve()
    lines = [
        f"# nats-server configuration for keyplane topology {topology.name!r}",
        "# generated by `keyplane nats-config`; see docs/bus.md",
        f"listen: {json.dumps(f'{host}:{port}')}",
        "",
        "tls {",
        f"  cert_file: {json.dumps(str(base / 'nats' / 'server.pem'))}",
        f"  key_file: {json.dumps(str(base / 'nats' / 'server.key'))}",
        f"  ca_file: {json.dumps(str(base / 'ca.pem'))}",
        "  # a client must present a certificate of the keyplane CA; its subject is its user",
        "  verify_and_map: true",
        "  # TLS before anything else: a client never talks in clear, not even to an impostor",
        "  handshake_first: true",
        f"  timeout: {tls_timeout_s:g}",
        "}",
        "",
        "authorization {",
        f"  timeout: {tls_timeout_s:g}",
        "  users = [",
    ]
    for user in [*topology_users(topology), *extra_users]:
        if user.comment:
            lines.append(f"    # {user.comment}")
        lines += [
            f"    {{user: {json.dumps(user.subject)}, permissions: {{",
            f"      publish: {{allow: {_list(user.publish)}}}",
            f"      subscribe: {{allow: {_list(user.subscribe)}}}",
        ]
        if user.allow_responses:
            lines.append("      allow_responses: true")
        lines.append("    }}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
