"""ETSI 004 server + SDK, in-process over the FakeKeyManager double."""

from __future__ import annotations

import pytest

from keyplane.api.client import (
    BadRequestError,
    Etsi004Status,
    Etsi004StatusError,
    QosParameters,
    UnauthorizedError,
)


async def _open_pair(sdk004, chunk: int = 32) -> str:  # type: ignore[no-untyped-def]
    a = await sdk004("alice").open_connect("sae_a", "sae_b", QosParameters(Key_chunk_size=chunk))
    assert not a.peer_connected
    b = await sdk004("bob").open_connect("sae_b", "sae_a", key_stream_id=a.key_stream_id)
    assert b.peer_connected and b.key_stream_id == a.key_stream_id
    assert b.qos.Key_chunk_size == chunk
    return a.key_stream_id


async def test_get_key_same_index_same_chunk_at_both_ends(sdk004) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004, chunk=64)
    alice, bob = sdk004("alice"), sdk004("bob")
    a0, a1 = await alice.get_key(ksid), await alice.get_key(ksid)
    assert (a0.index, a1.index) == (0, 1) and len(a0.key) == 64 and a0.key != a1.key
    b1 = await bob.get_key(ksid, 1)
    b0 = await bob.get_key(ksid, 0)
    assert (b0.key, b1.key) == (a0.key, a1.key)


async def test_get_key_before_peer_joins_is_status_3(sdk004) -> None:  # type: ignore[no-untyped-def]
    opened = await sdk004("alice").open_connect("sae_a", "sae_b")
    with pytest.raises(Etsi004StatusError) as err:
        await sdk004("alice").get_key(opened.key_stream_id)
    assert err.value.status is Etsi004Status.GK_PEER_NOT_CONNECTED


async def test_open_connect_reused_ksid_is_status_5(sdk004) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004)
    with pytest.raises(Etsi004StatusError) as err:
        await sdk004("bob").open_connect("sae_b", "sae_a", key_stream_id=ksid)
    assert err.value.status is Etsi004Status.OC_KSID_ALREADY_IN_USE


async def test_open_connect_qos_above_sla_is_status_7_with_counter_proposal(sdk004) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Etsi004StatusError) as err:
        await sdk004("alice").open_connect("sae_a", "sae_b",
                                           QosParameters(Min_bps=10**7, Max_bps=10**7))
    assert err.value.status is Etsi004Status.OC_QOS_NOT_SATISFIABLE
    assert err.value.body["QoS"]["Max_bps"] == 100_000


async def test_get_key_small_metadata_buffer_is_status_8_with_size_needed(sdk004) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004)
    with pytest.raises(Etsi004StatusError) as err:
        await sdk004("alice").get_key(ksid, 0, metadata_size=3)
    assert err.value.status is Etsi004Status.GK_METADATA_INSUFFICIENT_SIZE
    needed = err.value.body["Metadata"]["Metadata_size"]
    chunk = await sdk004("alice").get_key(ksid, 0, metadata_size=needed)
    assert chunk.metadata == {"hops": 1}


async def test_get_key_passes_caller_metadata_to_km(sdk004) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004)
    chunk = await sdk004("alice").get_key(ksid, metadata={"label": "x"})
    assert chunk.metadata == {"hops": 1, "echo": {"label": "x"}}


async def test_close_then_get_key_is_status_4_never_9(sdk004) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004)
    await sdk004("alice").close_stream(ksid)
    await sdk004("bob").close_stream(ksid)
    with pytest.raises(Etsi004StatusError) as err:
        await sdk004("alice").get_key(ksid)
    assert err.value.status is Etsi004Status.NO_QKD_CONNECTION_AVAILABLE


async def test_open_connect_as_someone_elses_sae_is_401(sdk004, network) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnauthorizedError):
        await sdk004("mallory").open_connect("sae_b", "sae_a")
    assert network.streams == {}


async def test_get_key_on_foreign_stream_is_401_and_consumes_nothing(sdk004, network) -> None:  # type: ignore[no-untyped-def]
    ksid = await _open_pair(sdk004)
    pool = network.pool_bits
    with pytest.raises(UnauthorizedError):
        await sdk004("carol").get_key(ksid)
    assert network.pool_bits == pool


@pytest.mark.parametrize("body", [
    {"Key_stream_ID": "nope"}, {"Key_stream_ID": "00000000-0000-4000-8000-000000000000",
                                "index": -1},
    {"Key_stream_ID": "00000000-0000-4000-8000-000000000000",
     "Metadata": {"Metadata_size": 10, "Metadata_buffer": "e30="}},  # not an object
    {"Key_stream_ID": "00000000-0000-4000-8000-000000000000",
     "Metadata": {"Metadata_size": True}},  # not an integer
])
async def test_get_key_malformed_is_http_400_and_never_reaches_km(raw, network, body) -> None:  # type: ignore[no-untyped-def]
    r = await raw("alice").post("/etsi004/v1/get_key", json=body)
    assert r.status_code == 400 and "message" in r.json()
    assert network.calls == []


async def test_open_connect_bad_qos_is_400(sdk004) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequestError):
        await sdk004("alice")._post("/v1/open_connect", {
            "source": "sae_a", "destination": "sae_b", "QoS": {"Key_chunk_size": 0}})
