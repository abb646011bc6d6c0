"""Hybrid provisioning in a live relay: a quantum outage mid-session, per hybrid policy.

Network: km0 - km1 - km2 (SAE ``sa`` at km0, ``sb`` at km2), real KeyManagers on one bus, the
fake control plane of tests/support configuring every hop with the policy under test. An
outage of link km1-km2 is its key stores running empty at both ends (what a cut fibre
leaves once the stored key is used); restoring it is new blocks arriving again.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import keyplane.keymanager.pqc as pqc_mod
from keyplane.api.etsi015 import (
    PROVENANCE_MEMBER,
    ROOT_MEMBER,
    KmEventFeed,
    PathHop,
    QkdApplication,
    app_id,
    qkdn_id,
    validate_node,
)
from keyplane.bus import MemoryBus, topics
from keyplane.certs import ensure_network_certs
from keyplane.clock import RealClock
from keyplane.errors import (
    InsufficientKeyMaterial,
    KeyWaitExpired,
    PqcUnavailable,
    QosNotMet,
    RelayError,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager import KeyManager, KmIdentity, KmSettings
from keyplane.keymanager.hybrid import PROVENANCE_EXTENSION
from keyplane.keymanager.interface import DeliveredKey
from keyplane.messages import ConfigAck, SessionConfig
from keyplane.store import Database
from tests.support.deadlines import DEADLINE_S
from tests.support.etsi015 import AgentNetwork, agent_url
from tests.support.km_net import CALLER_A, CALLER_B, KmNet, line_topology, open_pair, start_net

CUT = "km1-km2"
TOPOLOGY = line_topology(3)

NetFactory = Callable[..., Awaitable[KmNet]]


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KmIdentity]:
    certs = ensure_network_certs(TOPOLOGY, tmp_path_factory.mktemp("certs"))
    return {n: KmIdentity.load(n, p.cert, p.key, certs.ca.cert) for n, p in certs.kms.items()}


@pytest.fixture
async def make_net(km_db: Database, identities: dict[str, KmIdentity]
                   ) -> AsyncIterator[NetFactory]:
    nets: list[KmNet] = []

    async def make(policy: str, *, seed: int, pqc_nodes: tuple[str, ...] = ("km0", "km1", "km2"),
                   **control: object) -> KmNet:
        net = await start_net(TOPOLOGY, MemoryBus(seed=seed), km_db, RealClock(), seed=seed,
                              settings=KmSettings(link_reserve_bytes=512, relay_attempts=1,
                                                  relay_confirm_timeout_s=2.0),
                              identities={n: identities[n] for n in pqc_nodes},
                              hybrid_policy=policy, **control)
        nets.append(net)
        return net

    yield make
    for net in nets:
        await net.close()


def cut(net: KmNet, link_id: str = CUT) -> None:
    """Quantum outage: every sendable byte of the link is used up at both ends."""
    for km in net.kms.values():
        store = km.link_stores.get(link_id)
        if store is not None and store.sendable_bytes:
            store.take_send(store.sendable_bytes)


async def restore(net: KmNet, seed: int, link_id: str = CUT) -> None:
    """The link delivers key again (new block ids at both ends)."""
    await net.feed(random.Random(seed), 4, 4096, first_block=1000, links={link_id})


def sources(keys: list[DeliveredKey]) -> list[list[tuple[str, str]]]:
    out = []
    for k in keys:
        assert k.extension is not None
        out.append([(r["hop"], r["source"]) for r in k.extension[PROVENANCE_EXTENSION]])
    return out


async def enc_dec(net: KmNet, number: int = 2, extensions: dict[str, object] | None = None
                  ) -> tuple[list[DeliveredKey], list[DeliveredKey]]:
    enc = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", number, 256,
                                        extensions=extensions)
    dec = await net.kms["km2"].dec_keys(CALLER_B, "sb", "sa", [k.key_id for k in enc])
    assert [k.key for k in enc] == [k.key for k in dec]
    assert sources(enc) == sources(dec)
    return enc, dec


QKD_PATH = [("km0->km1", "qkd"), ("km1->km2", "qkd")]
FALLBACK_PATH = [("km0->km1", "qkd"), ("km1->km2", "pqc")]


@contextlib.asynccontextmanager
async def etsi015_view(net: KmNet) -> AsyncIterator[AgentNetwork]:
    """An SDN agent per node, fed by its KM's events as NodeRuntime wires them."""
    agents = AgentNetwork(TOPOLOGY, [n.id for n in TOPOLOGY.nodes], net.bus, net.clock,
                          net.events)
    feeds = [KmEventFeed(agent) for agent in agents.agents.values()]
    for feed in feeds:
        net.events.add_sink(feed)
    try:
        async with agents:
            yield agents
    finally:
        for feed in feeds:
            net.events.sinks.remove(feed)


async def provision(agents: AgentNetwork, session: str) -> None:
    """What the SDN Controller's southbound does for a relayed session, over RESTCONF."""
    path = [n.id for n in TOPOLOGY.nodes]
    hops = [PathHop(agent_url(n), qkdn_id(n)) for n in path]
    uid = await agents.driver.provision_path(session, hops, 0,
                                             applications=[app_id(session)])
    for here, far in ((hops[0], hops[-1]), (hops[-1], hops[0])):
        await agents.driver.register_application(here.url, QkdApplication(
            app_id(session), "urn:keyplane:sae:sa", ("urn:keyplane:sae:sb",),
            backing_qkdl_ids=(uid,), local_qkdn_id=here.qkdn_id, remote_qkdn_id=far.qkdn_id))


async def hop_view(agents: AgentNetwork, node: str, session: str
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """(``node``'s qkd_app provenance, hop → last source of its VIRT link), read over
    RESTCONF; the whole document it serves validates against the YANG modules."""
    client = agents.driver.client(agent_url(node))
    validate_node(await client.get())
    apps = await client.get(f"{ROOT_MEMBER}/qkd_applications")
    (app,) = [a for a in apps["etsi-qkd-sdn-node:qkd_applications"].get("qkd_app", [])
              if a["app_id"] == app_id(session)] or [{}]
    links = await client.get(f"{ROOT_MEMBER}/qkd_links")
    sent = {h["hop"]: h["last_source"]
            for link in links["etsi-qkd-sdn-node:qkd_links"]["qkd_link"]
            for h in link.get(PROVENANCE_MEMBER, {}).get("hop", [])}
    return app.get(PROVENANCE_MEMBER, {}), sent


def hop_counts(provenance: dict[str, Any]) -> dict[str, tuple[str, str, str, str]]:
    return {h["hop"]: (h["qkd_keys"], h["pqc_keys"], h["combined_keys"], h["last_source"])
            for h in provenance.get("hop", [])}


async def test_either_session_link_cut_keys_flow_through_pqc_and_return_to_qkd(
        make_net: NetFactory) -> None:
    net = await make_net("either", seed=101)
    async with etsi015_view(net) as agents:
        enc, _ = await enc_dec(net)
        assert sources(enc) == [QKD_PATH] * 2
        session = next(e.session for e in net.sink.events
                       if e.type is EventType.key_delivered and e.node == "km0")
        assert session is not None
        await provision(agents, session)

        cut(net)
        enc, dec = await enc_dec(net, number=3)
        assert sources(enc) == [FALLBACK_PATH] * 3
        assert net.kms["km1"].relay.hops_sent["pqc"] >= 1
        delivered = [e for e in net.sink.events if e.type is EventType.key_delivered
                     and e.node == "km2"][-1]
        assert [(r["hop"], r["source"]) for r in delivered.data["provenance"]] == FALLBACK_PATH
        relayed = [e for e in net.sink.events if e.type is EventType.key_relayed
                   and e.data["key_ids"] == [k.key_id for k in enc]]
        assert {e.data["hop"]: e.data["hop_source"] for e in relayed} == dict(FALLBACK_PATH)
        # the ETSI 015 view of the source node: the outage hop went to ML-KEM
        provenance, _ = await hop_view(agents, "km0", session)
        assert provenance["hybrid_policy"] == "either"
        assert hop_counts(provenance) == {"km0->km1": ("5", "0", "0", "qkd"),
                                          "km1->km2": ("2", "3", "0", "pqc")}
        _, sent_by_km1 = await hop_view(agents, "km1", session)
        assert sent_by_km1 == {"km1->km2": "pqc"}  # the intermediate's VIRT link

        await restore(net, seed=102)
        enc, _ = await enc_dec(net)
        assert sources(enc) == [QKD_PATH] * 2
        for node in ("km0", "km2"):  # both ends count the keys they delivered
            provenance, _ = await hop_view(agents, node, session)
            assert hop_counts(provenance)["km1->km2"] == ("4", "3", "0", "qkd")
        assert (await hop_view(agents, "km1", session))[1] == {"km1->km2": "qkd"}


async def test_qkd_only_session_link_cut_refuses_with_insufficient_key_material(
        make_net: NetFactory) -> None:
    net = await make_net("qkd-only", seed=103)
    await enc_dec(net)
    cut(net)
    # the hop waits forward_key_wait_s for key, then refuses: the timeout status
    with pytest.raises(KeyWaitExpired, match="km1-km2"):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
    assert net.kms["km2"].held_for("sb", "sa") == 0  # nothing half-delivered
    assert not any(km.relay.hops_sent["pqc"] or km.relay.hops_sent["combined"]
                   for km in net.kms.values())
    await restore(net, seed=104)
    enc, _ = await enc_dec(net)  # the same session serves again once key is back
    assert sources(enc) == [QKD_PATH] * 2


async def test_combined_004_keys_are_identical_at_both_ends_and_say_combined(
        make_net: NetFactory) -> None:
    net = await make_net("qkd-and-pqc", seed=105)
    sid = await open_pair(net)
    before = net.kms["km0"].link_stores["km0-km1"].sendable_bytes
    for _ in range(3):
        a = await net.kms["km0"].get_key(CALLER_A, sid, None)
        b = await net.kms["km2"].get_key(CALLER_B, sid, None)
        assert a.key == b.key and a.index == b.index
        assert a.metadata["key_ID"] == b.metadata["key_ID"]
        want = [{"hop": "km0->km1", "source": "combined"},
                {"hop": "km1->km2", "source": "combined"}]
        assert a.metadata[PROVENANCE_EXTENSION] == b.metadata[PROVENANCE_EXTENSION] == want
    assert net.kms["km0"].link_stores["km0-km1"].sendable_bytes < before  # QKD key was used
    cut(net)  # combined needs QKD too: refused, never PQC alone
    with pytest.raises(KeyWaitExpired):
        await net.kms["km0"].get_key(CALLER_A, sid, None)


async def test_at_least_qkd_combines_when_pqc_is_there_and_never_uses_pqc_alone(
        make_net: NetFactory) -> None:
    net = await make_net("at-least-qkd", seed=106, pqc_nodes=("km0", "km1"))
    enc, _ = await enc_dec(net)
    # km2 has no certificate: its hop stays QKD, the other one is combined
    assert sources(enc) == [[("km0->km1", "combined"), ("km1->km2", "qkd")]] * 2
    cut(net)
    with pytest.raises(InsufficientKeyMaterial):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)


async def test_either_session_without_pqc_at_the_hop_stops_with_insufficient_key(
        make_net: NetFactory) -> None:
    net = await make_net("either", seed=107, pqc_nodes=("km0", "km1"))
    cut(net)
    with pytest.raises(InsufficientKeyMaterial):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)


async def test_qkd_and_pqc_session_without_identities_fails_with_pqc_unavailable(
        make_net: NetFactory) -> None:
    net = await make_net("qkd-and-pqc", seed=108, pqc_nodes=())
    with pytest.raises(PqcUnavailable, match="no certificate"):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)


async def test_required_provenance_narrows_the_batch_or_is_refused(
        make_net: NetFactory) -> None:
    net = await make_net("either", seed=109)
    qkd_only = {"extension_mandatory": [{PROVENANCE_EXTENSION: "qkd-only"}]}
    enc, _ = await enc_dec(net, extensions=qkd_only)
    assert sources(enc) == [QKD_PATH] * 2
    combined = {"extension_mandatory": [{PROVENANCE_EXTENSION: "qkd-and-pqc"}]}
    enc, _ = await enc_dec(net, extensions=combined)
    assert sources(enc) == [[("km0->km1", "combined"), ("km1->km2", "combined")]] * 2
    cut(net)
    with pytest.raises(KeyWaitExpired):  # the outage hop may not fall back now
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256, extensions=qkd_only)
    enc, _ = await enc_dec(net)  # the session's own policy still falls back
    assert sources(enc) == [FALLBACK_PATH] * 2
    with pytest.raises(QosNotMet, match="not all extension_mandatory"):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256,
                                      extensions={"extension_mandatory": [{"other": 1}]})
    with pytest.raises(QosNotMet, match="must be one of"):
        await net.kms["km0"].enc_keys(
            CALLER_A, "sa", "sb", 1, 256,
            extensions={"extension_mandatory": [{PROVENANCE_EXTENSION: "quantum-ish"}]})


async def test_required_provenance_beyond_the_users_policy_raises_qos_not_met(
        make_net: NetFactory) -> None:
    net = await make_net("qkd-only", seed=110)
    with pytest.raises(QosNotMet, match="qkd-and-pqc cannot be met"):
        await net.kms["km0"].enc_keys(
            CALLER_A, "sa", "sb", 1, 256,
            extensions={"extension_mandatory": [{PROVENANCE_EXTENSION: "qkd-and-pqc"}]})


async def test_receiver_refuses_a_pqc_hop_its_policy_does_not_allow(
        make_net: NetFactory) -> None:
    net = await make_net("either", seed=111)
    await enc_dec(net, number=1)
    sid = next(iter(net.control.sessions))
    fs = net.control.sessions[sid]
    # km2 is told the session is qkd-only while km1 still believes "either"
    cfg = net.control.configs(fs, fs.path, fs.epoch)[-1]
    ack = await net.bus.request(topics.km_config("km2"),
                                SessionConfig.model_validate(
                                    {**cfg.model_dump(), "hybrid_policy": "qkd-only"}),
                                timeout_s=DEADLINE_S)
    assert isinstance(ack, ConfigAck) and ack.ok
    dropped = net.kms["km2"].relay.frames_dropped
    cut(net)
    with pytest.raises(RelayError):
        await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
    assert net.kms["km2"].relay.frames_dropped > dropped
    assert net.kms["km2"].held_for("sb", "sa") == 0


async def test_pqc_secrets_are_fresh_and_never_in_logs_or_events(
        make_net: NetFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[bytes] = []
    real = pqc_mod.derive_pqc_key

    def spy(shared_secret: bytes, transcript: bytes, context: bytes, length: int) -> bytes:
        key = real(shared_secret, transcript, context, length)
        secrets.extend((shared_secret, key))
        return key

    monkeypatch.setattr(pqc_mod, "derive_pqc_key", spy)
    net = await make_net("qkd-and-pqc", seed=112)
    await enc_dec(net, number=2)
    cut(net, "km0-km1")
    await restore(net, seed=113, link_id="km0-km1")
    await enc_dec(net, number=1)
    assert len(secrets) >= 8  # both ends, every hop, key frames and confirmations
    distinct = set(secrets)
    # each exchange: sender and receiver derive the same pair (secret, key) once
    assert len(distinct) * 2 == len(secrets)
    events = "\n".join(e.model_dump_json() for e in net.sink.events)
    for secret in distinct:
        for text in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert text not in caplog.text
            assert text not in events
    assert all(not km.relay._offers for km in net.kms.values())  # every offer used once


async def test_provenance_survives_a_destination_restart(make_net: NetFactory) -> None:
    net = await make_net("either", seed=114)
    sid = await open_pair(net)
    cut(net)
    a = await net.kms["km0"].get_key(CALLER_A, sid, 0)  # relays index 0 to km2
    km2 = await net.restart("km2")
    b = await km2.get_key(CALLER_B, sid, 0)
    assert a.key == b.key
    assert a.metadata[PROVENANCE_EXTENSION] == b.metadata[PROVENANCE_EXTENSION] == [
        {"hop": h, "source": s} for h, s in FALLBACK_PATH]


async def test_identity_of_another_node_is_refused(identities: dict[str, KmIdentity],
                                                   km_db: Database) -> None:
    km = KeyManager("km0", TOPOLOGY, MemoryBus(seed=115), km_db, RealClock(),
                    EventStream(RealClock()))
    assert not km.pqc_capable
    with pytest.raises(ValueError, match="km1"):
        km.set_identity(identities["km1"])
    km.set_identity(identities["km0"])
    assert km.pqc_capable
