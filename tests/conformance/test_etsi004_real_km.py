"""ETSI GS QKD 004 V2.1.1 against the real KM and the real control plane (issue #16.1).

km0 - km1 - km2, ``sa`` (alice) at km0, ``sb`` (bob) and ``sc`` (carol) at km2; every
element is the product's (tests/support/real_net.py), calls go through the ETSI 004 app.
Clause 6.3: a stream is paired by its Key_stream_ID (null or nil: the KM assigns one, the
peer learns it out of band), never by its pair of SAEs; an open waits for its peer until
its QoS Timeout; the status codes are the standard's 0-8 with their meanings; status 7
carries the KM's counter-proposal; both ends are served the same negotiated QoS.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.real_net import RealNet, real_net

from keyplane.api.etsi004.status import Etsi004Status as S
from keyplane.config import parse_topology
from keyplane.events import EventType
from keyplane.store import Database, sqlite_url

TOPOLOGY = """
version: 1
name: etsi004-conformance
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km2], length_km: 10}
users:
  - {id: alice, certificate_subject: "CN=alice,O=c004",
     sla: {max_bps: 100000, priority: 5, max_sessions: 8}}
  - {id: bob, certificate_subject: "CN=bob,O=c004",
     sla: {max_bps: 50000, priority: 3, max_sessions: 8}}
  - {id: carol, certificate_subject: "CN=carol,O=c004", sla: {max_sessions: 8}}
applications:
  - {sae_id: sa, owner: alice, node: km0}
  - {sae_id: sb, owner: bob, node: km2}
  - {sae_id: sc, owner: carol, node: km2}
"""
LONG_MS = 600_000
"""A QoS Timeout no busy machine reaches: the peer joins within it (a deadline)."""
NIL = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[RealNet]:
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        async with real_net(parse_topology(TOPOLOGY), db, seed=4004) as n:
            yield n
    finally:
        await db.close()


def qos(**kw: Any) -> dict[str, Any]:
    return {"Key_chunk_size": 32, "Timeout": LONG_MS, **kw}


async def call(net: RealNet, user: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await net.client(user).post(f"/etsi004/v1/{op}", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["status"] in {int(s) for s in S}, out  # only the standard's codes
    return out


async def open_(net: RealNet, user: str, src: str, dst: str, ksid: str | None = None,
                **q: Any) -> dict[str, Any]:
    return await call(net, user, "open_connect", {"source": src, "destination": dst,
                                                  "QoS": qos(**q), "Key_stream_ID": ksid})


async def paired(net: RealNet, ksid: str | None = None, **q: Any) -> str:
    opened = await open_(net, "alice", "sa", "sb", ksid, **q)
    assert opened["status"] == S.PEER_NOT_CONNECTED
    joined = await open_(net, "bob", "sb", "sa", opened["Key_stream_ID"], **q)
    assert joined["status"] == S.SUCCESSFUL
    sid: str = joined["Key_stream_ID"]
    assert sid == opened["Key_stream_ID"]
    return sid


@pytest.mark.conformance(
    "etsi004", "6.3",
    "OPEN_CONNECT with a null or nil Key_stream_ID: the KM assigns one")
@pytest.mark.conformance(
    "etsi004", "6.3",
    "OPEN_CONNECT joining the peer's Key_stream_ID: status 0")
@pytest.mark.conformance("etsi004", "6.4", "GET_KEY: the same key at both ends for the same index")
async def test_nil_key_stream_id_is_assigned_by_the_km_and_joined_by_the_peer(
        net: RealNet) -> None:
    opened = await open_(net, "alice", "sa", "sb", NIL)
    assert opened["status"] == S.PEER_NOT_CONNECTED and opened["Key_stream_ID"] != NIL
    joined = await open_(net, "bob", "sb", "sa", opened["Key_stream_ID"])
    assert joined["status"] == S.SUCCESSFUL
    a = await call(net, "alice", "get_key", {"Key_stream_ID": opened["Key_stream_ID"]})
    b = await call(net, "bob", "get_key", {"Key_stream_ID": opened["Key_stream_ID"],
                                           "index": a["index"]})
    assert a["status"] == b["status"] == S.SUCCESSFUL
    assert a["key_buffer"] == b["key_buffer"] and len(base64.b64decode(a["key_buffer"])) == 32


@pytest.mark.conformance(
    "etsi004", "6.3",
    "streams paired by Key_stream_ID only, never by the pair of SAEs")
async def test_stale_pending_open_is_never_paired_with_a_later_stream_of_the_same_saes(
        net: RealNet) -> None:
    """The #16 scenario: X left pending (status 1); both peers then open Y: they get Y, with
    the same keys, and X is still X (never merged into Y, nor Y into X)."""
    stale = await open_(net, "alice", "sa", "sb")
    assert stale["status"] == S.PEER_NOT_CONNECTED
    y = str(uuid.uuid4())
    sid = await paired(net, y)
    assert sid == y != stale["Key_stream_ID"]
    a = await call(net, "alice", "get_key", {"Key_stream_ID": y, "index": 0})
    b = await call(net, "bob", "get_key", {"Key_stream_ID": y, "index": 0})
    assert a["status"] == b["status"] == S.SUCCESSFUL and a["key_buffer"] == b["key_buffer"]
    # X was not configured by Y's pairing: its GET_KEY still waits for its own peer
    again = await open_(net, "alice", "sa", "sb", stale["Key_stream_ID"])
    assert again["status"] == S.PEER_NOT_CONNECTED
    # bob joining X now pairs X, as its own stream, with its own keys
    joined = await open_(net, "bob", "sb", "sa", stale["Key_stream_ID"])
    assert joined["status"] == S.SUCCESSFUL
    x = await call(net, "bob", "get_key", {"Key_stream_ID": stale["Key_stream_ID"],
                                           "index": 0})
    assert x["status"] == S.SUCCESSFUL and x["key_buffer"] != a["key_buffer"]


@pytest.mark.conformance(
    "etsi004", "6.3",
    "a pending open waits for its peer until its QoS Timeout")
async def test_pending_open_expires_at_its_timeout(net: RealNet) -> None:
    opened = await open_(net, "alice", "sa", "sb", Timeout=50)
    ksid = opened["Key_stream_ID"]
    assert opened["status"] == S.PEER_NOT_CONNECTED
    refused = await net.wait_event(lambda e: e.type == EventType.admission_refused
                                   and e.element == "admission" and e.session == ksid)
    assert "did not open" in refused.data["reason"] and "0.05 s" in refused.data["reason"]
    await net.wait_event(lambda e: e.type == EventType.admission_refused
                         and e.element == "km" and e.session == ksid)
    # the expired open is over: GET_KEY says the peer is not connected, and bob's open of
    # the same id starts a new pending stream instead of joining the expired one
    got = await call(net, "alice", "get_key", {"Key_stream_ID": ksid})
    assert got["status"] == S.GK_PEER_NOT_CONNECTED
    late = await open_(net, "bob", "sb", "sa", ksid, Timeout=50)
    assert late["status"] == S.PEER_NOT_CONNECTED


@pytest.mark.conformance(
    "etsi004", "6.4",
    "GET_KEY before the peer joined waits for it, up to the Timeout")
async def test_get_key_before_the_peer_joins_waits_for_it_then_serves(net: RealNet) -> None:
    import asyncio

    opened = await open_(net, "alice", "sa", "sb")
    ksid = opened["Key_stream_ID"]
    waiting = asyncio.create_task(call(net, "alice", "get_key", {"Key_stream_ID": ksid}))
    joined = await open_(net, "bob", "sb", "sa", ksid)
    assert joined["status"] == S.SUCCESSFUL
    a = await waiting
    b = await call(net, "bob", "get_key", {"Key_stream_ID": ksid, "index": a["index"]})
    assert a["status"] == b["status"] == S.SUCCESSFUL and a["key_buffer"] == b["key_buffer"]


@pytest.mark.conformance("etsi004", "6.2", "status 3: GET_KEY, peer application not connected")
async def test_get_key_of_an_open_whose_peer_never_comes_is_status_3(net: RealNet) -> None:
    opened = await open_(net, "alice", "sa", "sb", Timeout=50)
    got = await call(net, "alice", "get_key", {"Key_stream_ID": opened["Key_stream_ID"]})
    assert got["status"] == S.GK_PEER_NOT_CONNECTED


@pytest.mark.conformance("etsi004", "6.2", "status 5: Key_stream_ID already in use")
async def test_key_stream_id_in_use_by_another_pair_is_status_5(net: RealNet) -> None:
    sid = await paired(net)
    taken = await open_(net, "carol", "sc", "sa", sid)
    assert taken["status"] == S.OC_KSID_ALREADY_IN_USE
    pending = await open_(net, "alice", "sa", "sb")
    other = await open_(net, "carol", "sc", "sa", pending["Key_stream_ID"])
    assert other["status"] == S.OC_KSID_ALREADY_IN_USE
    # the pending stream is untouched: bob still joins it
    joined = await open_(net, "bob", "sb", "sa", pending["Key_stream_ID"])
    assert joined["status"] == S.SUCCESSFUL


@pytest.mark.conformance("etsi004", "6.2", "status 7 with the KM's counter-proposal QoS")
async def test_qos_above_the_sla_is_status_7_with_admission_controls_counter_proposal(
        net: RealNet) -> None:
    refused = await open_(net, "alice", "sa", "sb", Max_bps=200_000, Priority=7, Jitter=10)
    assert refused["status"] == S.OC_QOS_NOT_SATISFIABLE
    offer = refused["QoS"]
    assert (offer["Max_bps"], offer["Priority"], offer["Jitter"]) == (100_000, 5, 10)
    # the counter-proposal is admitted as it stands
    accepted = await call(net, "alice", "open_connect", {
        "source": "sa", "destination": "sb", "QoS": offer, "Key_stream_ID": None})
    assert accepted["status"] == S.PEER_NOT_CONNECTED


@pytest.mark.conformance("etsi004", "6.2", "status 7 with the KM's counter-proposal QoS")
async def test_chunk_size_unlike_the_openers_is_status_7_proposing_the_streams_size(
        net: RealNet) -> None:
    opened = await open_(net, "alice", "sa", "sb", Key_chunk_size=64)
    refused = await open_(net, "bob", "sb", "sa", opened["Key_stream_ID"])
    assert refused["status"] == S.OC_QOS_NOT_SATISFIABLE
    assert refused["QoS"]["Key_chunk_size"] == 64


@pytest.mark.conformance(
    "etsi004", "6.1.1",
    "QoS: both ends of a stream get the same negotiated QoS")
async def test_both_ends_are_served_the_same_negotiated_qos(net: RealNet) -> None:
    opened = await open_(net, "alice", "sa", "sb", Max_bps=80_000, Min_bps=1_000, Priority=4,
                         Jitter=30, TTL=60)
    ksid = opened["Key_stream_ID"]
    joined = await open_(net, "bob", "sb", "sa", ksid, Max_bps=40_000, Priority=2, Jitter=20,
                         TTL=0, Timeout=LONG_MS - 1)
    assert joined["status"] == S.SUCCESSFUL
    # the opener asks again for its stream: now status 0, with the same QoS as the peer
    again = await open_(net, "alice", "sa", "sb", ksid, Max_bps=80_000, Min_bps=1_000,
                        Priority=4, Jitter=30, TTL=60)
    assert again["status"] == S.SUCCESSFUL
    assert again["QoS"] == joined["QoS"] == {
        "Key_chunk_size": 32, "Max_bps": 40_000, "Min_bps": 1_000, "Jitter": 20,
        "Priority": 2, "Timeout": LONG_MS - 1, "TTL": 60,
        "Metadata_mimetype": "application/json"}


@pytest.mark.conformance(
    "etsi004", "6.2",
    "status 4 for an unknown Key_stream_ID, 2 for an index already received")
async def test_unknown_key_stream_id_is_status_4_and_a_spent_index_status_2(
        net: RealNet) -> None:
    unknown = await call(net, "alice", "get_key", {"Key_stream_ID": str(uuid.uuid4())})
    assert unknown["status"] == S.NO_QKD_CONNECTION_AVAILABLE
    closed = await call(net, "alice", "close", {"Key_stream_ID": str(uuid.uuid4())})
    assert closed["status"] == S.NO_QKD_CONNECTION_AVAILABLE
    sid = await paired(net)
    first = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 0})
    assert first["status"] == S.SUCCESSFUL
    spent = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 0})
    assert spent["status"] == S.GK_INSUFFICIENT_KEY_AVAILABLE
    assert "key_buffer" not in spent


@pytest.mark.conformance(
    "etsi004", "6.5",
    "CLOSE: ends the stream for both ends; closing again succeeds")
@pytest.mark.conformance("etsi004", "6.2", "status 3: GET_KEY, peer application not connected")
async def test_get_key_after_the_peer_closed_is_status_3(net: RealNet) -> None:
    sid = await paired(net)
    assert (await call(net, "bob", "close", {"Key_stream_ID": sid}))["status"] == S.SUCCESSFUL
    await net.wait_event(lambda e: e.type == EventType.session_deleted
                         and e.element == "km" and e.session == sid and e.node == "km0")
    got = await call(net, "alice", "get_key", {"Key_stream_ID": sid})
    assert got["status"] == S.GK_PEER_NOT_CONNECTED
    # CLOSE of a stream that already ended is a success that changes nothing
    assert (await call(net, "alice", "close", {"Key_stream_ID": sid}))["status"] == 0
