"""ETSI 014 dec_keys with acknowledgement (issue #14) against the real KM and control plane.

The crash window: the slave's KM marks keys delivered, then dies (or the answer outlasts the
client's timeout) before its answer reaches the slave application; the retry gets 400 and
the key is held by the master only. With ``{"keyplane_ack": true}`` in ``key_IDs_extension``
the keys stay held, sealed in the store, for the slave SAE until a later dec_keys confirms
them (``keyplane_confirm``): after a KM restart from the same database the slave fetches
the same bytes again, nobody else can.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.test_etsi004_real_km import TOPOLOGY
from tests.support.real_net import RealNet, real_net

from keyplane.config import parse_topology
from keyplane.store import Database, sqlite_url

K = "/api/v1/keys"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[RealNet]:
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        async with real_net(parse_topology(TOPOLOGY), db, seed=14014) as n:
            yield n
    finally:
        await db.close()


async def enc(net: RealNet, number: int = 1) -> list[dict[str, Any]]:
    r = await net.client("alice").get(f"{K}/sb/enc_keys", params={"number": number})
    assert r.status_code == 200, r.text
    keys: list[dict[str, Any]] = r.json()["keys"]
    return keys


async def dec(net: RealNet, user: str, ids: list[str], **ext: Any) -> Any:
    body: dict[str, Any] = {"key_IDs": [{"key_ID": i} for i in ids]}
    if ext:
        body["key_IDs_extension"] = ext
    return await net.client(user).post(f"{K}/sa/dec_keys", json=body)


@pytest.mark.conformance(
    "etsi014", "5.3 (extension)",
    "dec_keys with acknowledgement: fetched again after a KM restart, nothing lost, nobody else")
async def test_unconfirmed_keys_survive_a_km_restart_for_their_slave_only(
        net: RealNet) -> None:
    made = await enc(net, 2)
    ids = [k["key_ID"] for k in made]
    lost = await dec(net, "bob", ids, keyplane_ack=True)  # answered into a crash
    assert lost.status_code == 200 and lost.json()["keys"] == made
    await net.restart("km2")
    same = await dec(net, "bob", ids, keyplane_ack=True)
    assert same.status_code == 200 and same.json()["keys"] == made
    other = await net.client("carol").post(f"{K}/sa/dec_keys", json={
        "key_IDs": [{"key_ID": ids[0]}], "key_IDs_extension": {"keyplane_ack": True}})
    assert other.status_code == 401 and "keys" not in other.json()
    # confirmed with the next dec_keys: spent, durably (a restart does not bring them back)
    (nxt,) = await enc(net)
    got = await dec(net, "bob", [nxt["key_ID"]], keyplane_ack=True, keyplane_confirm=ids)
    assert got.status_code == 200 and got.json()["keys"] == [nxt]
    await net.restart("km2")
    spent = await dec(net, "bob", ids[:1], keyplane_ack=True)
    assert spent.status_code == 400
    # confirming twice changes nothing; the unconfirmed key is still there
    again = await dec(net, "bob", [nxt["key_ID"]], keyplane_confirm=ids)
    assert again.status_code == 200 and again.json()["keys"] == [nxt]


async def test_without_acknowledgement_keys_answered_into_a_crash_are_gone(
        net: RealNet) -> None:
    """The window this extension closes: plain dec_keys spends the keys before it answers."""
    (made,) = await enc(net)
    lost = await dec(net, "bob", [made["key_ID"]])
    assert lost.status_code == 200
    await net.restart("km2")
    again = await dec(net, "bob", [made["key_ID"]])
    assert again.status_code == 400


@pytest.mark.parametrize("ext", [{"keyplane_ack": "yes"}, {"keyplane_confirm": "x"},
                                 {"keyplane_ack": True, "keyplane_confirm": [1]},
                                 {"keyplane_confirm": ["not-a-uuid"]}])
@pytest.mark.conformance(
    "etsi014", "5.3 (extension)",
    "dec_keys with acknowledgement: bad input is HTTP 400 (ETSI 014 Error) and changes nothing")
async def test_malformed_acknowledgement_is_http_400_and_changes_nothing(
        net: RealNet, ext: dict[str, Any]) -> None:
    (made,) = await enc(net)
    r = await dec(net, "bob", [made["key_ID"]], **ext)
    assert r.status_code == 400 and r.json()["message"] == "bad request format"
    assert r.json()["details"]
    first = await dec(net, "bob", [made["key_ID"]])
    assert first.status_code == 200 and first.json()["keys"] == [made]
