"""Test support for the secured bus: a harness identity and secured nats-servers.

The session's shared nats-server (``nats_server`` in tests/conftest.py) runs with TLS,
client certificates and the permissions of a small topology, plus one *harness* identity
for in-process tests whose subject is not the bus permissions themselves (the bus contract
suite, control-plane tests with fake KMs). The harness may subscribe to ``keyplane.>``,
``t.>`` and every inbox, never to ``>``, and signs nothing (its buses carry no end-to-end
check; the checks have their own tests with real element credentials).
"""

from __future__ import annotations

from pathlib import Path

from keyplane.bus import BusCredentials, BusSecurity
from keyplane.bus.natsconf import NatsUser
from keyplane.certs import ensure_client_cert
from keyplane.config import Topology
from keyplane.services import NatsServer

HARNESS_SUBJECT = "CN=test-harness,OU=test,O=keyplane"
HARNESS = NatsUser(HARNESS_SUBJECT, publish=(">",), subscribe=("keyplane.>", "t.>", "_INBOX.>"),
                   comment="test harness (tests/support/bus.py)")

SMALL_TOPOLOGY = Topology.model_validate({
    "name": "bus-test",
    "nodes": [{"id": "km1"}, {"id": "km2"}, {"id": "km3"}],
    "links": [{"endpoints": ["km1", "km2"], "length_km": 10.0},
              {"endpoints": ["km2", "km3"], "length_km": 10.0}],
})
"""km1 - km2 - km3: km1 and km3 are not neighbours."""


def start_secured_nats(certs_dir: Path, topology: Topology = SMALL_TOPOLOGY,
                       *, port: int = 0) -> NatsServer:
    """A secured nats-server for ``topology`` whose certificates live in ``certs_dir``,
    with the harness identity added."""
    srv = NatsServer.start_secured(topology, certs_dir, port=port, extra_users=[HARNESS])
    ensure_client_cert(certs_dir, "test-harness", HARNESS_SUBJECT)
    return srv


def harness_security(srv: NatsServer) -> BusSecurity:
    """TLS credentials of the harness identity on ``srv`` (no signing, no checks)."""
    assert srv.certs_dir is not None, "not a secured server"
    d = srv.certs_dir
    return BusSecurity.load(BusCredentials(ca_file=d / "ca.pem", cert_file=d / "test-harness.pem",
                                           key_file=d / "test-harness.key"))


def element_security(srv: NatsServer, role: str, element_id: str) -> BusSecurity:
    """The real credentials of one element of the server's topology (TLS and signing)."""
    assert srv.certs_dir is not None, "not a secured server"
    return BusSecurity.load(BusCredentials.for_element(srv.certs_dir, role, element_id))
