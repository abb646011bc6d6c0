"""The bus: pub/sub with request/reply, in memory (embedded) or over NATS (distributed).

Topic names (the paper's proof of concept gives every KM its own topic):

* ``keyplane.km.<node>.config``      Admission Control → KM: session configuration, deletion
* ``keyplane.km.<node>.relay``       KM → KM: relay frames, confirmations, link block holdings
* ``keyplane.control.access``        KM → Access Control: authentication requests
* ``keyplane.control.admission``     KM → Admission Control: open, keep-alive, close
* ``keyplane.telemetry.link.<link>`` QKD modules → Monitoring Element: per-block telemetry
* ``keyplane.telemetry.km.<node>``   KM → Monitoring Element: buffer levels, sessions
* ``keyplane.alarms.<link>``         Monitoring Element → Routing Element, SDN Controller
* ``keyplane.control.sdn.nodes``     node process → SDN Controller: announcements
* ``keyplane.events.<element>``      every element → observers: the Fig. 4 event stream
* ``keyplane.sdn.<node>.notifications`` SDN agent → SDN Controller: ETSI 015 notifications
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyplane.bus.base import Bus, Handler, Subscription, topic_matches, unsubscribe_all
from keyplane.bus.codec import Message, decode, encode
from keyplane.bus.memory import MemoryBus
from keyplane.bus.settings import BusSettings, bus_settings_from_env

if TYPE_CHECKING:
    from keyplane.bus.security import BusCredentials, BusSecurity

__all__ = [
    "Bus",
    "BusCredentials",
    "BusSecurity",
    "BusSettings",
    "Handler",
    "MemoryBus",
    "Message",
    "Subscription",
    "connect",
    "decode",
    "encode",
    "topic_matches",
    "topics",
    "unsubscribe_all",
]


def __getattr__(name: str) -> Any:
    """``BusCredentials`` and ``BusSecurity`` on first use: they need ``cryptography``'s
    X.509 and the certificate helpers (about 0.05 s of CPU), which a link worker of an
    embedded network (in-memory bus, no credentials) never uses before its first block."""
    if name in ("BusCredentials", "BusSecurity"):
        from keyplane.bus import security

        return getattr(security, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class topics:
    """Topic names used between elements."""

    ACCESS = "keyplane.control.access"
    ADMISSION = "keyplane.control.admission"
    ROUTING = "keyplane.control.routing"
    SDN = "keyplane.control.sdn"
    SDN_NODES = "keyplane.control.sdn.nodes"
    MONITORING = "keyplane.control.monitoring"

    @staticmethod
    def km_config(node: str) -> str:
        return f"keyplane.km.{node}.config"

    @staticmethod
    def km_relay(node: str) -> str:
        return f"keyplane.km.{node}.relay"

    @staticmethod
    def km_control(node: str) -> str:
        """Control requests to a KM other than session config (e.g. status queries)."""
        return f"keyplane.km.{node}.control"

    @staticmethod
    def link_telemetry(link_id: str) -> str:
        return f"keyplane.telemetry.link.{link_id}"

    @staticmethod
    def km_telemetry(node: str) -> str:
        return f"keyplane.telemetry.km.{node}"

    @staticmethod
    def alarm(link_id: str) -> str:
        return f"keyplane.alarms.{link_id}"

    @staticmethod
    def events(element: str) -> str:
        return f"keyplane.events.{element}"

    @staticmethod
    def sdn_notifications(node: str) -> str:
        """ETSI 015 notifications of a node's SDN agent (``*`` for every node)."""
        return f"keyplane.sdn.{node}.notifications"


async def connect(url: str | None, *, name: str = "keyplane",
                  security: BusSecurity | None = None, settings: BusSettings | None = None
                  ) -> Bus:
    """A bus for ``url``: ``None`` or ``"memory://"`` gives a new :class:`MemoryBus`,
    ``nats://host:port`` or ``tls://host:port`` a :class:`~keyplane.bus.nats.NatsBus`.

    Args:
        url: the bus.
        name: the client name the server shows.
        security: required for NATS: the element's credentials
            (:meth:`BusSecurity.load`), or :meth:`BusSecurity.danger_insecure`.
        settings: NATS timeouts and backoff (default: :func:`bus_settings_from_env`).

    Raises:
        ValueError: an unsupported URL, or a NATS URL without ``security``.
        BusError: the NATS server did not accept us within the startup timeout.
    """
    if url is None or url.startswith("memory:"):
        return MemoryBus()
    if url.startswith(("nats://", "tls://")):
        from keyplane.bus.nats import NatsBus

        if security is None:
            raise ValueError("a NATS bus needs the element's credentials (BusSecurity.load); "
                             "BusSecurity.danger_insecure() runs without them")
        return await NatsBus.connect(url, name=name, security=security,
                                     settings=settings or bus_settings_from_env())
    raise ValueError(f"unsupported bus URL {url!r} (use memory:// or nats://host:port)")
