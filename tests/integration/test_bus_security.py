"""The secured bus against a real nats-server run with ``keyplane nats-config``'s output:
who may connect, who may use which topic, and who may sign what (docs/bus.md)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from keyplane.bus import BusCredentials, BusSecurity, Message, topics
from keyplane.bus.nats import NatsBus
from keyplane.bus.settings import BusSettings
from keyplane.certs import CONTROLLER_ID, CertPaths, client_ssl_context
from keyplane.clock import RealClock
from keyplane.errors import BusError, MessageRejected
from keyplane.events import EventStream
from keyplane.keymanager import KeyManager
from keyplane.messages import ConfigAck, HopRole, KmTelemetry, SessionConfig
from keyplane.services import NatsServer
from keyplane.store import Database, sqlite_url
from tests.support.bus import SMALL_TOPOLOGY, element_security, harness_security
from tests.support.deadlines import DEADLINE_S

pytestmark = [pytest.mark.nats]

QUICK = BusSettings(startup_timeout_s=3.0, connect_timeout_s=5.0)
"""A server that refuses us does so at once: no need to wait two minutes in a test."""


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = await asyncio.to_thread(_start, tmp_path / "certs")
    try:
        yield srv
    finally:
        srv.stop()


def _start(certs: Path) -> NatsServer:
    from tests.support.bus import start_secured_nats

    return start_secured_nats(certs)


async def _connect(srv: NatsServer, security: BusSecurity) -> NatsBus:
    return await NatsBus.connect(srv.url, security=security, settings=QUICK)


def _config(node: str) -> SessionConfig:
    return SessionConfig(session_id="forged-1", node=node, role=HopRole.intermediate,
                         prev_km="km1", next_km="km3", source_sae="a", destination_sae="b",
                         bucket_size_bits=256, token_rate_bps=1000.0, idle_timeout_s=30.0)


class _Inbox:
    """A harness subscriber: what arrived where, with an event to wait on."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Message]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, topic: str, msg: Message) -> None:
        self.got.append((topic, msg))
        self.arrived.set()


async def test_client_without_credentials_cannot_connect(secured: NatsServer) -> None:
    with pytest.raises(BusError, match="cannot connect"):
        await NatsBus.connect(secured.url.replace("tls://", "nats://"),
                              security=BusSecurity.danger_insecure("test"), settings=QUICK)
    # TLS that trusts the server, but no client certificate: refused in the handshake
    assert secured.certs_dir is not None
    bare = ssl.create_default_context(cafile=str(secured.certs_dir / "ca.pem"))
    with pytest.raises(BusError, match="cannot connect"):
        await NatsBus.connect(secured.url, security=BusSecurity(tls=bare), settings=QUICK)


async def test_certificate_of_the_ca_without_a_bus_identity_cannot_connect(
        secured: NatsServer, tmp_path: Path) -> None:
    from keyplane.certs import ensure_client_cert

    assert secured.certs_dir is not None
    sae = ensure_client_cert(secured.certs_dir, "some-sae", "CN=alice,O=keyplane-demo")
    ctx = client_ssl_context(CertPaths(sae.cert, sae.key), secured.certs_dir / "ca.pem")
    with pytest.raises(BusError, match="Authorization Violation"):
        await NatsBus.connect(secured.url, security=BusSecurity(tls=ctx), settings=QUICK)
    # the raw client says the same: the server maps certificates to users, no fallback
    with pytest.raises(nats.errors.Error):
        nc = await nats.connect(secured.url, tls=ctx, tls_handshake_first=True,
                                allow_reconnect=False)
        await nc.close()


async def test_km_credential_cannot_subscribe_to_everything(secured: NatsServer) -> None:
    km1 = await _connect(secured, element_security(secured, "km", "km1"))
    harness = await _connect(secured, harness_security(secured))
    try:
        everything, own = _Inbox(), _Inbox()
        await km1.subscribe(">", everything)
        await km1.subscribe("keyplane.km.*.config", everything)
        await km1.subscribe(topics.km_config("km1"), own)
        async with asyncio.timeout(DEADLINE_S):
            # the server has decided about both subscriptions once it reported them
            while len(km1.permission_errors) < 2:
                await km1.flush()
            while not own.got:  # core NATS is at most once: publish until one arrives
                await harness.publish(topics.km_config("km3"), KmTelemetry(node="km3"))
                await harness.publish(topics.km_config("km1"), KmTelemetry(node="km1"))
                await harness.flush()
                await km1.flush()
        assert everything.got == []  # not even its own message came through '>'
        assert {t for t, _ in own.got} == {topics.km_config("km1")}
        assert any('">"' in e for e in km1.permission_errors)
    finally:
        await km1.close()
        await harness.close()


@pytest.mark.parametrize("subject", [
    topics.km_relay("km3"),         # not a neighbour of km1
    topics.km_config("km2"),        # configuration: the control plane's
    topics.SDN,                     # the SDN Controller's topology changes
    "keyplane.control.link.km1-km2",  # link faults: operators only
])
async def test_km_credential_cannot_publish_on_other_subjects(secured: NatsServer,
                                                               subject: str) -> None:
    km1 = await _connect(secured, element_security(secured, "km", "km1"))
    harness = await _connect(secured, harness_security(secured))
    try:
        seen, control = _Inbox(), _Inbox()
        await harness.subscribe(subject, seen)
        await harness.subscribe(topics.km_relay("km2"), control)
        await km1.publish(subject, KmTelemetry(node="km1"))
        async with asyncio.timeout(DEADLINE_S):
            # once the server reported the violation it has decided about that message; a
            # round trip of the harness then brings anything it had routed to it
            while not km1.permission_errors:
                await km1.flush()
            await harness.flush()
            # km1 may publish on its neighbour's relay topic: the harness does receive that
            while not control.got:  # core NATS is at most once: publish until one arrives
                await km1.publish(topics.km_relay("km2"), KmTelemetry(node="km1"))
                await km1.flush()
                await harness.flush()
        assert seen.got == []
        assert subject in km1.permission_errors[-1]
    finally:
        await km1.close()
        await harness.close()


async def test_forged_session_config_with_a_valid_bus_credential_is_rejected_by_the_km(
        secured: NatsServer, tmp_path: Path) -> None:
    """The attacker holds the control plane's *bus* credential (it may publish on km2's
    config topic) but not its signing key: it signs with km1's key, or not at all."""
    assert secured.certs_dir is not None
    certs = secured.certs_dir
    clock = RealClock()
    db = await Database.open(sqlite_url(tmp_path / "km2.db"))
    km_bus = await _connect(secured, element_security(secured, "km", "km2"))
    km = KeyManager("km2", SMALL_TOPOLOGY, km_bus, db, clock, EventStream(clock))
    stolen = BusCredentials.for_element(certs, "control", CONTROLLER_ID)
    forgers = {
        "wrong signer": BusSecurity.load(stolen.model_copy(update={
            "signing_cert_file": certs / "sign" / "km.km1.pem",
            "signing_key_file": certs / "sign" / "km.km1.key"})),
        "no signature": BusSecurity.load(stolen.model_copy(update={
            "signing_cert_file": None, "signing_key_file": None})),
    }
    buses = {name: await _connect(secured, sec) for name, sec in forgers.items()}
    genuine = await _connect(secured, element_security(secured, "control", CONTROLLER_ID))
    try:
        await km.start()
        for name, bus in buses.items():
            with pytest.raises(MessageRejected) as err:
                await bus.request(topics.km_config("km2"), _config("km2"), timeout_s=30.0)
            assert err.value.kind == "km.session_config", name
            assert "forged-1" not in km.forwarding, name
        assert km_bus.rejected == 2
        # the same message signed by the control plane's own key is applied: the check,
        # not something else, refused the forgeries
        ack = await genuine.request(topics.km_config("km2"), _config("km2"), timeout_s=30.0)
        assert isinstance(ack, ConfigAck) and ack.ok, ack
        assert "forged-1" in km.forwarding
    finally:
        await km.close()
        for bus in [*buses.values(), genuine, km_bus]:
            await bus.close()
        await db.close()


async def test_insecure_bus_is_refused_without_its_flag() -> None:
    from keyplane.bus import connect

    with pytest.raises(ValueError, match="danger_insecure"):
        await connect("nats://127.0.0.1:1")
