"""Identity only from the verified client certificate, through the real key manager (#13).

The spoofing cases of issue #13, each over real mutual TLS against real KeyManagers with
the real Access Control element (users and applications from the topology in the store);
only Admission Control is the test double. In the issue, sae4's certificate plus
``Authorization: Bearer <carol's subject>`` and ``X-SAE-ID: <carol's SAE>`` got carol's
keys over ETSI 014, and over ETSI 004 took an index of carol's stream and closed it.
Here dave (``sd``) tries the same against bob (``sb``); both are at km1. Every attempt
must be refused, return no key bytes and leave bob's keys and stream untouched.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.km_net import KmNet, start_net

from keyplane.api.client import (
    AsyncEtsi004Client,
    AsyncEtsi014Client,
    Etsi004Status,
    QosParameters,
)
from keyplane.api.server import KmApiServer, serve_km_api
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.bus import MemoryBus
from keyplane.certs import Issued, client_ssl_context, ensure_network_certs
from keyplane.clock import RealClock
from keyplane.config import Topology, parse_topology
from keyplane.control.access import AccessControl
from keyplane.errors import SessionNotFound
from keyplane.events import EventStream
from keyplane.keymanager.interface import Caller
from keyplane.store import Database
from keyplane.store.topology import load_topology_into

TOPOLOGY = """
version: 1
name: spoof
nodes: [{id: km0}, {id: km1}]
links:
  - {endpoints: [km0, km1], length_km: 10}
users:
  - {id: alice, certificate_subject: "CN=alice,O=spoof", sla: {allowed_peers: [sb]}}
  - {id: bob, certificate_subject: "CN=bob,O=spoof"}
  - {id: dave, certificate_subject: "CN=dave,O=spoof"}
applications:
  - {sae_id: sa, owner: alice, node: km0}
  - {sae_id: sb, owner: bob, node: km1}
  - {sae_id: sd, owner: dave, node: km1}
"""
BOB = "CN=bob,O=spoof"
FORGED = {"Authorization": f"Bearer {BOB}", "X-SAE-ID": "sb"}
K = "/api/v1/keys"


@dataclass
class Net:
    topology: Topology
    issued: Issued
    net: KmNet
    servers: dict[str, KmApiServer]

    def url(self, sae: str) -> str:
        return self.servers[self.topology.application(sae).node].url

    def http(self, sae: str) -> httpx.AsyncClient:
        """A plain client holding ``sae``'s owner's certificate (to forge headers with)."""
        c = self.issued.saes[sae]
        return httpx.AsyncClient(base_url=self.url(sae), timeout=30.0,
                                 verify=client_ssl_context(c, self.issued.ca.cert))

    def sdk014(self, sae: str) -> AsyncEtsi014Client:
        c = self.issued.saes[sae]
        return AsyncEtsi014Client(self.url(sae), cert=c.cert, key=c.key, ca=self.issued.ca.cert,
                                  timeout_s=30.0)

    def sdk004(self, sae: str) -> AsyncEtsi004Client:
        c = self.issued.saes[sae]
        return AsyncEtsi004Client(self.url(sae) + "/etsi004", cert=c.cert, key=c.key,
                                  ca=self.issued.ca.cert, timeout_s=30.0)


@pytest.fixture
async def spoof_net(tmp_path: Path, db: Database) -> AsyncIterator[Net]:
    topology = parse_topology(TOPOLOGY)
    issued = ensure_network_certs(topology, tmp_path / "pki")
    await load_topology_into(db, topology)
    bus = MemoryBus()
    clock = RealClock()
    access = AccessControl(bus, db, clock, EventStream(clock))
    await access.start()
    net = await start_net(topology, bus, db, clock, blocks=8, answer_access=False)
    servers: dict[str, KmApiServer] = {}
    try:
        limits = Etsi014Limits.from_km_settings(net.settings)
        for node in topology.nodes:
            servers[node.id] = await serve_km_api(
                net.kms[node.id], kme_id=node.id, server_cert=issued.kms[node.id],
                ca_file=issued.ca.cert,
                settings=ApiSettings.from_topology(topology, node.id, limits=limits))
        yield Net(topology, issued, net, servers)
    finally:
        for s in servers.values():
            await s.close()
        await net.close()
        await access.close()
        await bus.close()


def _no_key_bytes(r: httpx.Response, *keys: bytes) -> None:
    text = r.text
    assert "keys" not in r.json() and "key_buffer" not in r.json(), text
    for k in keys:
        assert base64.b64encode(k).decode() not in text


async def test_etsi014_forged_bearer_and_sae_id_get_no_keys(spoof_net: Net) -> None:
    async with spoof_net.sdk014("sb") as bob, spoof_net.sdk014("sa") as alice, \
            spoof_net.http("sd") as dave:
        (own,) = await bob.enc_keys("sa")  # bob's pair sb -> sa is live, owned by bob
        (for_bob,) = await alice.enc_keys("sb")  # a key alice made for bob to fetch
        for headers in (FORGED, {"X-SAE-ID": "sb"}, {"Authorization": f"Bearer {BOB}"}):
            r = await dave.get(f"{K}/sa/enc_keys", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            _no_key_bytes(r, own.key)
            r = await dave.get(f"{K}/sa/status", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert "stored_key_count" not in r.json()
            r = await dave.get(f"{K}/sa/dec_keys", params={"key_ID": for_bob.key_id},
                               headers=headers)
            assert r.status_code == 401, (headers, r.text)
            _no_key_bytes(r, for_bob.key)
            r = await dave.post(f"{K}/sa/dec_keys", headers=headers,
                                json={"key_IDs": [{"key_ID": for_bob.key_id}]})
            assert r.status_code == 401, (headers, r.text)
            _no_key_bytes(r, for_bob.key)
        # dave acting as himself for bob's key: the key manager refuses (ETSI 014's 401)
        r = await dave.get(f"{K}/sa/dec_keys", params={"key_ID": for_bob.key_id})
        assert r.status_code == 401
        _no_key_bytes(r, for_bob.key)
        # nothing was consumed: bob still gets the key alice made for him
        (got,) = await bob.dec_keys("sa", [for_bob.key_id])
        assert got.key == for_bob.key


async def _open_bob_stream(net: Net, bob: AsyncEtsi004Client, alice: AsyncEtsi004Client
                           ) -> str:
    opened = await bob.open_connect("sb", "sa", QosParameters(Key_chunk_size=32))
    joined = await alice.open_connect("sa", "sb", QosParameters(Key_chunk_size=32),
                                      key_stream_id=opened.key_stream_id)
    assert joined.peer_connected
    return opened.key_stream_id


async def test_etsi004_get_key_and_close_of_another_owners_stream_are_refused(
        spoof_net: Net) -> None:
    async with spoof_net.sdk004("sb") as bob, spoof_net.sdk004("sa") as alice, \
            spoof_net.http("sd") as dave:
        ksid = await _open_bob_stream(spoof_net, bob, alice)
        e = "/etsi004/v1"
        for headers in (FORGED, {"Authorization": f"Bearer {BOB}"}, {}):
            r = await dave.post(f"{e}/get_key", json={"Key_stream_ID": ksid, "index": 0},
                                headers=headers)
            assert r.status_code == 401 or (
                r.status_code == 200 and r.json()["status"] != Etsi004Status.SUCCESSFUL), r.text
            _no_key_bytes(r)
            r = await dave.post(f"{e}/close", json={"Key_stream_ID": ksid}, headers=headers)
            assert r.status_code == 401 or (
                r.status_code == 200 and r.json()["status"] != Etsi004Status.SUCCESSFUL), r.text
        # bob's stream is intact: index 0 is still his, the same as alice's, and open
        mine, hers = await bob.get_key(ksid, 0), await alice.get_key(ksid, 0)
        assert mine.index == 0 and mine.key == hers.key
        await bob.close_stream(ksid)


async def test_key_manager_compares_principals_not_identity_text(spoof_net: Net) -> None:
    """A token caller whose text is bob's subject is not bob (the KM side of the fix)."""
    async with spoof_net.sdk004("sb") as bob, spoof_net.sdk004("sa") as alice:
        ksid = await _open_bob_stream(spoof_net, bob, alice)
        km1 = spoof_net.net.kms["km1"]
        impostor = Caller(identity=BOB, method="token")
        assert impostor.principal != Caller(identity=BOB).principal
        with pytest.raises(SessionNotFound):
            await km1.get_key(impostor, ksid, 0)
        with pytest.raises(SessionNotFound):
            await km1.close_stream(impostor, ksid)
        chunk: Any = await km1.get_key(Caller(identity=BOB), ksid, 0)
        assert chunk.index == 0


async def test_etsi014_unknown_slave_is_400_and_a_forbidden_one_401(spoof_net: Net) -> None:
    """ETSI 014: an SAE_ID the network does not have is the request's fault (400), not the
    server's (503, which clients retry); a known SAE the caller may not reach is 401."""
    async with spoof_net.http("sa") as alice:
        for url in (f"{K}/nobody/status", f"{K}/nobody/enc_keys"):
            r = await alice.get(url)
            assert r.status_code == 400, r.text
            assert r.json() == {"message": "slave SAE_ID is not an SAE of this network",
                                "details": [{"parameter": "slave_SAE_ID"}]}
        r = await alice.get(f"{K}/nobody/dec_keys",
                            params={"key_ID": "00000000-0000-4000-8000-000000000000"})
        assert r.status_code == 400 and r.json()["message"].startswith("master SAE_ID")
        for url in (f"{K}/sd/status", f"{K}/sd/enc_keys"):  # alice's SLA: only sb
            r = await alice.get(url)
            assert r.status_code == 401, r.text
            _no_key_bytes(r)


async def test_etsi014_key_ids_entries_with_unknown_members_are_accepted(spoof_net: Net) -> None:
    """QURSA's QuKayDee backend sends master_SAE_ID inside each key_IDs entry (#16)."""
    async with spoof_net.sdk014("sa") as alice, spoof_net.http("sb") as bob:
        keys = await alice.enc_keys("sb", number=2)
        r = await bob.post(f"{K}/sa/dec_keys", json={
            "key_IDs": [{"key_ID": k.key_id, "master_SAE_ID": "sa"} for k in keys],
            "key_IDs_extension": {"vendor_note": 1}, "vendor_member": True})
        assert r.status_code == 200, r.text
        got = [(k["key_ID"], base64.b64decode(k["key"])) for k in r.json()["keys"]]
        assert got == [(k.key_id, k.key) for k in keys]
