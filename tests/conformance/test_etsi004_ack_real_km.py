"""ETSI 004 GET_KEY with acknowledgement (issue #14.4) against the real KM and control plane.

The crash window: a KM marks a chunk delivered, then dies before its answer reaches the
application. Plain GET_KEY spends the chunk before answering (durable before delivered), so
the application never gets it. With ``{"keyplane_ack": true}`` in the request metadata the
chunk stays held, sealed in the store, for the stream's owner until a later GET_KEY
confirms it (``keyplane_confirm``) or CLOSE: after a KM restart from the same database the
owner fetches the same bytes again, the peer still gets them at its end, nobody else can.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.test_etsi004_real_km import TOPOLOGY, call, paired
from tests.support.real_net import RealNet, real_net

from keyplane.api.etsi004.status import Etsi004Status as S
from keyplane.config import parse_topology
from keyplane.store import Database, sqlite_url


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[RealNet]:
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        async with real_net(parse_topology(TOPOLOGY), db, seed=14004) as n:
            yield n
    finally:
        await db.close()


def ack(**members: Any) -> dict[str, Any]:
    return {"Metadata": {"Metadata_size": 4096,
                         "Metadata_buffer": {"keyplane_ack": True, **members}}}


@pytest.mark.conformance(
    "etsi004", "6.4 (extension)",
    "GET_KEY with acknowledgement: fetched again after a KM restart, nothing lost, nobody else")
async def test_unconfirmed_chunk_survives_a_km_restart_for_its_owner_only(
        net: RealNet) -> None:
    sid = await paired(net)
    # delivered at km0, whose answer we treat as lost with the KM
    lost = await call(net, "alice", "get_key", {"Key_stream_ID": sid, **ack()})
    assert lost["status"] == S.SUCCESSFUL and lost["index"] == 0
    await net.restart("km0")
    # a null index after the restart serves the first index not confirmed again; so does
    # the index itself, as often as asked until it is confirmed
    same = await call(net, "alice", "get_key", {"Key_stream_ID": sid, **ack()})
    assert (same["status"], same["index"]) == (S.SUCCESSFUL, 0)
    assert same["key_buffer"] == lost["key_buffer"]
    again = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 0, **ack()})
    assert again["status"] == S.SUCCESSFUL and again["key_buffer"] == lost["key_buffer"]
    # not lost: the peer gets the same bytes at its end; nobody else gets them
    peer = await call(net, "bob", "get_key", {"Key_stream_ID": sid, "index": 0})
    assert peer["status"] == S.SUCCESSFUL and peer["key_buffer"] == lost["key_buffer"]
    other = await call(net, "carol", "get_key", {"Key_stream_ID": sid, "index": 0})
    assert other["status"] == S.NO_QKD_CONNECTION_AVAILABLE and "key_buffer" not in other
    # confirming index 0 with the next GET_KEY spends it: asked again, it is gone
    nxt = await call(net, "alice", "get_key", {"Key_stream_ID": sid, **ack(keyplane_confirm=0)})
    assert nxt["status"] == S.SUCCESSFUL and nxt["index"] == 1
    spent = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 0, **ack()})
    assert spent["status"] == S.GK_INSUFFICIENT_KEY_AVAILABLE
    # a confirmation survives a restart too; index 1, not confirmed, is still there
    await net.restart("km0")
    spent = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 0, **ack()})
    assert spent["status"] == S.GK_INSUFFICIENT_KEY_AVAILABLE
    one = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 1})
    assert one["status"] == S.SUCCESSFUL and one["key_buffer"] == nxt["key_buffer"]


async def test_without_acknowledgement_a_chunk_answered_into_a_crash_is_gone(
        net: RealNet) -> None:
    """The window #14.4 closes: plain GET_KEY spends the chunk before it answers."""
    sid = await paired(net)
    lost = await call(net, "alice", "get_key", {"Key_stream_ID": sid})
    assert lost["status"] == S.SUCCESSFUL
    await net.restart("km0")
    again = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": lost["index"]})
    assert again["status"] == S.GK_INSUFFICIENT_KEY_AVAILABLE


async def test_confirming_an_index_never_handed_out_changes_nothing(net: RealNet) -> None:
    sid = await paired(net)
    refused = await call(net, "alice", "get_key",
                         {"Key_stream_ID": sid, **ack(keyplane_confirm=[5])})
    assert refused["status"] == S.GK_INSUFFICIENT_KEY_AVAILABLE and "key_buffer" not in refused
    first = await call(net, "alice", "get_key", {"Key_stream_ID": sid, "index": 5, **ack()})
    assert first["status"] == S.SUCCESSFUL


@pytest.mark.parametrize("members", [{"keyplane_ack": "yes"}, {"keyplane_confirm": "0"},
                                     {"keyplane_ack": True, "keyplane_confirm": [-1]}])
@pytest.mark.conformance(
    "etsi004", "6.4 (extension)",
    "GET_KEY with acknowledgement: bad input is HTTP 400 and changes nothing")
async def test_malformed_acknowledgement_is_http_400_and_changes_nothing(
        net: RealNet, members: dict[str, Any]) -> None:
    sid = await paired(net)
    r = await net.client("alice").post("/etsi004/v1/get_key", json={
        "Key_stream_ID": sid, "Metadata": {"Metadata_size": 4096, "Metadata_buffer": members}})
    assert r.status_code == 400 and r.json()["message"] == "bad request format"
    first = await call(net, "alice", "get_key", {"Key_stream_ID": sid})
    assert (first["status"], first["index"]) == (S.SUCCESSFUL, 0)
