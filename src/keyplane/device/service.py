"""``keyplane device``: an emulated QKD device serving ETSI GS QKD 014 to the key managers.

The device runs the link's emulated QKD modules (:mod:`keyplane.physical`) and offers each
end's key stream as an ETSI 014 KME (:class:`~keyplane.device.kme.DeviceKme`) whose SAE is
that end's KM, over HTTPS with mutual TLS, with the project's own ETSI 014 server
(:func:`~keyplane.api.etsi014.app.create_etsi014_app`). So the twin can live on another
host, and a real device that speaks ETSI 014 can take its place without a change in the KMs
(the link's ``source`` in the topology names the URLs).

Both ends (default): one process, the link in a worker process
(:class:`~keyplane.physical.pool.LinkWorkerPool`, lower priority) and two HTTPS servers.
One end (``end=<node>``): this process runs that end's module only and reaches the other
end's device process over the bus (``bus``), as two devices on two hosts would over their
classical channel.

At start it writes ``<state>/device-<link>.json``: each end's URL, KME id and SAE id, and
where its operations endpoints (``/metrics``) are when the process serves them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from keyplane.api.etsi014.app import create_etsi014_app
from keyplane.api.httpserver import HttpServer
from keyplane.api.settings import ApiSettings, Etsi014Limits, LocalSae
from keyplane.bus import Bus
from keyplane.certs import ensure_device_cert, ensure_network_certs, server_ssl_context
from keyplane.clock import Clock, RealClock
from keyplane.config import Etsi014Source, Topology
from keyplane.device.kme import DeviceKme
from keyplane.device.metrics import DeviceMetrics
from keyplane.errors import ConfigError
from keyplane.events import EventStream
from keyplane.keymanager.interface import ApplicationService
from keyplane.lifecycle import Service
from keyplane.ops import Ops
from keyplane.physical.pool import EmulationSettings, LinkWorkerPool
from keyplane.physical.runner import LinkRunner
from keyplane.physical.sink import LinkKeySink

__all__ = ["DeviceSettings", "QkdDevice"]

logger = logging.getLogger(__name__)

End = Literal["alice", "bob"]


@dataclass(frozen=True)
class DeviceSettings:
    """What a device offers (ETSI 014 Status figures) and how it runs its link."""

    key_size_bits: int = 256
    capacity_keys: int = 65_536
    max_keys_per_request: int = 1024
    unclaimed_ttl_s: float = 120.0
    emulation: EmulationSettings = field(default_factory=EmulationSettings)


def _km_subject(node: str) -> str:
    # the subject keyplane.certs gives a KM's certificate: the KM is the device's SAE
    return f"CN={node},OU=km,O=keyplane"


class QkdDevice(Service):
    """An emulated QKD device for one link (see the module docstring).

    Args:
        topology: a topology that describes the link (its ``source`` is ignored here).
        link_id: the link to emulate.
        state_dir: certificates (``<state>/certs``, the network CA) and the endpoints file.
        end: ``None`` for both ends, else the node whose end runs here.
        bus: the bus to the other end's device process (one-end mode only).
        host: where to listen; ports: ``node -> port`` (0 or absent: a free port).
        seed: run seed (the same in both device processes of a link).
        clock: the clock; events: the event stream (link events).
        settings: :class:`DeviceSettings`.
        ops: the process's operations surface: the ETSI 014 servers report their requests
            to it, the ends' key figures join its registry (:mod:`keyplane.device.metrics`),
            and its URLs (:attr:`Ops.urls`) go into ``device-<link>.json``.

    Raises:
        ConfigError: unknown link or end, or one end without a bus.
    """

    def __init__(self, topology: Topology, link_id: str, *, state_dir: Path,
                 end: str | None = None, bus: Bus | None = None, host: str = "127.0.0.1",
                 ports: dict[str, int] | None = None, seed: int = 1,
                 clock: Clock | None = None, events: EventStream | None = None,
                 settings: DeviceSettings | None = None, ops: Ops | None = None) -> None:
        try:
            self.link = topology.link(link_id)
        except KeyError:
            raise ConfigError(f"no link {link_id!r} in topology {topology.name!r}") from None
        if end is not None and end not in self.link.endpoints:
            raise ConfigError(f"{end!r} is not an end of link {link_id}")
        if end is not None and bus is None:
            raise ConfigError("a device running one end needs a bus to the other end")
        self.topology = topology
        self.state_dir = state_dir
        self.bus = bus
        self.host = host
        self.ports = ports or {}
        self.seed = seed
        self.clock = clock or RealClock()
        self.events = events or EventStream(self.clock)
        self.settings = settings or DeviceSettings()
        a, b = self.link.endpoints
        self.local: dict[str, End] = {a: "alice", b: "bob"} if end is None else {
            end: "alice" if end == a else "bob"}
        saes = {node: node for node in (a, b)}
        if isinstance(self.link.source, Etsi014Source):
            for node, ep in self.link.source.ends.items():
                saes[node] = ep.sae_id or node
        s = self.settings
        self.kmes = {node: DeviceKme(
            self.link, role, sae_id=saes[node], peer_sae_id=saes[b if node == a else a],
            identity=_km_subject(node), clock=self.clock, key_size_bits=s.key_size_bits,
            capacity_keys=s.capacity_keys, max_keys_per_request=s.max_keys_per_request,
            unclaimed_ttl_s=s.unclaimed_ttl_s) for node, role in self.local.items()}
        self.ops = ops
        if ops is not None:
            ops.registry.register(DeviceMetrics(self.kmes.values()))
        self.servers: dict[str, HttpServer] = {}
        self._stack = contextlib.AsyncExitStack()

    @property
    def urls(self) -> dict[str, str]:
        """Each local end's ETSI 014 base URL (after :meth:`start`)."""
        return {node: srv.url for node, srv in self.servers.items()}

    async def start(self) -> None:
        """Run the link, serve each local end, write ``device-<link>.json``."""
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self) -> None:
        certs = ensure_network_certs(self.topology, self.state_dir / "certs")
        for node, kme in self.kmes.items():
            limits = Etsi014Limits(
                key_size_bits=kme.key_size_bits, min_key_size_bits=kme.key_size_bits,
                max_key_size_bits=kme.key_size_bits,
                max_key_per_request=kme.max_keys_per_request)
            # the ETSI 014 app calls only status, enc_keys and dec_keys, which a device has
            app = create_etsi014_app(cast(ApplicationService, kme), kme_id=kme.kme_id,
                                     settings=ApiSettings(
                limits=limits, saes=(LocalSae(kme.sae_id, _km_subject(node)),)))
            cert = ensure_device_cert(self.state_dir / "certs", kme.kme_id, host=self.host)
            server = HttpServer(app, host=self.host, port=self.ports.get(node, 0),
                                ssl_context=server_ssl_context(cert, certs.ca.cert),
                                interface="etsi014", name=f"device-{kme.kme_id}",
                                observer=self.ops.http if self.ops is not None else None)
            await server.start()
            self._stack.push_async_callback(server.close)
            self.servers[node] = server
        sinks: dict[tuple[str, str], LinkKeySink] = {
            (node, self.link.link_id): kme for node, kme in self.kmes.items()}
        emulation = self.settings.emulation
        runner: LinkRunner | LinkWorkerPool
        if len(self.local) == 2 and emulation.mode == "workers":
            runner = LinkWorkerPool(self.topology, clock=self.clock, sinks=sinks,
                                    seed=self.seed, bus=self.bus, events=self.events,
                                    settings=emulation, link_ids=[self.link.link_id])
        else:
            a, b = self.link.endpoints
            runner = LinkRunner(
                self.link, clock=self.clock, seed=self.seed,
                alice_sink=self.kmes.get(a), bob_sink=self.kmes.get(b), bus=self.bus,
                events=self.events, local_ends=tuple(self.local.values()),
                time_scale=emulation.time_scale,
                telemetry_interval_s=emulation.telemetry_interval_s)
        await runner.start()
        self._stack.push_async_callback(runner.close)
        self._write_endpoints(certs.ca.cert)
        logger.info("QKD device for %s serving %s", self.link.link_id, self.urls)

    def _write_endpoints(self, ca: Path) -> Path:
        doc: dict[str, Any] = {
            "link": self.link.link_id, "pid": os.getpid(),
            "ca": os.path.relpath(ca, self.state_dir),
            "ends": {node: {"url": self.servers[node].url, "kme_id": kme.kme_id,
                            "sae_id": kme.sae_id, "peer_sae_id": kme.peer_sae_id}
                     for node, kme in self.kmes.items()}}
        if self.ops is not None:
            doc["operations"] = dict(self.ops.urls)
        path = self.state_dir / f"device-{self.link.link_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    async def close(self) -> None:
        """Stop the link and the servers (idempotent)."""
        await self._stack.aclose()
