"""The KM API over real HTTPS with mutual TLS (uvicorn on port 0)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx
import pytest
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import LINE3_YAML, line3

from keyplane.api.client import (
    AsyncEtsi004Client,
    AsyncEtsi014Client,
    BadRequestError,
    Etsi014Client,
    TransportError,
    UnauthorizedError,
)
from keyplane.api.server import serve_km_api
from keyplane.api.settings import ApiSettings
from keyplane.certs import ensure_network_certs
from keyplane.config import parse_topology


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return ensure_network_certs(line3(), tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A second network with its own CA and the same subjects (must not be trusted)."""
    return ensure_network_certs(parse_topology(LINE3_YAML.replace("name: line3",
                                                                  "name: other")),
                                tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
async def servers(issued):  # type: ignore[no-untyped-def]
    network = FakeKeyNetwork(line3(), seed=4014)
    out = {}
    try:
        for node in ("km0", "km1", "km2"):
            out[node] = await serve_km_api(
                network.km(node), kme_id=node, server_cert=issued.kms[node],
                ca_file=issued.ca.cert,
                settings=ApiSettings.from_topology(network.topology, node))
        yield network, out
    finally:
        for s in out.values():
            await s.close()


def _client(issued, sae: str, url: str, cls=AsyncEtsi014Client, **kw):  # type: ignore[no-untyped-def]
    c = issued.saes[sae]
    return cls(url, cert=c.cert, key=c.key, ca=issued.ca.cert, **kw)


async def test_mutual_tls_identity_comes_from_client_certificate(servers, issued) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    async with _client(issued, "sae_a", srv["km0"].etsi014_url) as master, \
            _client(issued, "sae_c", srv["km2"].etsi014_url) as slave:
        status = await master.status("sae_c")
        assert status.master_SAE_ID == "sae_a" and status.source_KME_ID == "km0"
        keys = await master.enc_keys("sae_c", number=2, size=256)
        got = await slave.dec_keys("sae_a", [k.key_id for k in keys])
        assert [k.key for k in got] == [k.key for k in keys]


async def test_etsi004_stream_over_mutual_tls(servers, issued) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    async with _client(issued, "sae_a", srv["km0"].etsi004_url, AsyncEtsi004Client) as a, \
            _client(issued, "sae_b", srv["km1"].etsi004_url, AsyncEtsi004Client) as b:
        opened = await a.open_connect("sae_a", "sae_b")
        await b.open_connect("sae_b", "sae_a", key_stream_id=opened.key_stream_id)
        ka, kb = await a.get_key(opened.key_stream_id, 0), await b.get_key(opened.key_stream_id, 0)
        assert ka.key == kb.key
        await a.close_stream(opened.key_stream_id)


async def test_client_without_certificate_is_refused_at_tls(servers, issued) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    async with AsyncEtsi014Client(srv["km0"].url, ca=issued.ca.cert) as bare:
        with pytest.raises(TransportError):
            await bare.status("sae_b")


async def test_certificate_from_another_ca_is_refused_at_tls(servers, issued, foreign) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    c = foreign.saes["sae_a"]
    async with AsyncEtsi014Client(srv["km0"].url, cert=c.cert, key=c.key,
                                  ca=issued.ca.cert) as impostor:
        with pytest.raises(TransportError):
            await impostor.status("sae_b")


async def test_client_rejects_server_of_another_ca(servers, foreign) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    c = foreign.saes["sae_a"]
    async with AsyncEtsi014Client(srv["km0"].url, cert=c.cert, key=c.key,
                                  ca=foreign.ca.cert) as cautious:
        with pytest.raises(TransportError):
            await cautious.status("sae_b")


async def test_valid_sae_asking_for_other_pairs_keys_is_401_nothing_consumed(  # type: ignore[no-untyped-def]
        servers, issued) -> None:
    network, srv = servers
    async with _client(issued, "sae_a", srv["km0"].url) as master, \
            _client(issued, "sae_m", srv["km1"].url) as mallory, \
            _client(issued, "sae_b", srv["km1"].url) as bob:
        (key,) = await master.enc_keys("sae_b")
        with pytest.raises(UnauthorizedError):
            await mallory.dec_keys("sae_a", [key.key_id])
        assert key.key_id in network.pending
        (got,) = await bob.dec_keys("sae_a", [key.key_id])
        assert got.key == key.key


async def test_key_bytes_never_appear_in_logs(servers, issued, caplog) -> None:  # type: ignore[no-untyped-def]
    _, srv = servers
    caplog.set_level(logging.DEBUG)
    async with _client(issued, "sae_a", srv["km0"].url) as master, \
            _client(issued, "sae_b", srv["km1"].url) as slave:
        keys = await master.enc_keys("sae_b", number=4, size=256)
        got = await slave.dec_keys("sae_a", [k.key_id for k in keys])
        with pytest.raises(BadRequestError):
            await slave.dec_keys("sae_a", [keys[0].key_id])
    import base64

    text = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert caplog.records  # the servers and httpx did log
    for k in got:
        assert base64.b64encode(k.key).decode() not in text and k.key.hex() not in text
        assert k.key.hex() not in repr(k)


async def test_server_close_is_idempotent_and_frees_port(issued) -> None:  # type: ignore[no-untyped-def]
    network = FakeKeyNetwork(line3(), seed=1)
    srv = await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                             ca_file=issued.ca.cert)
    port = srv.port
    assert port > 0
    await srv.close()
    await srv.close()
    again = await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                               ca_file=issued.ca.cert, port=port)
    async with again:
        assert again.port == port
    with pytest.raises((httpx.ConnectError, ssl.SSLError, OSError)):
        async with httpx.AsyncClient(verify=ssl.create_default_context(
                cafile=str(issued.ca.cert))) as c:
            await c.get(again.url + "/openapi.json")


def test_sync_client_works_from_endpoints_file(issued, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.api_server import serve_network_in_thread, write_endpoints

    topo = line3()
    network = FakeKeyNetwork(topo, seed=2)
    base = issued.ca.cert.parent.parent
    with serve_network_in_thread(topo, issued, network.km) as srv:
        write_endpoints(base, topo, issued, srv)
        with Etsi014Client.from_state(base, "sae_a") as master, \
                Etsi014Client.from_state(base, "sae_c") as slave:
            keys = master.enc_keys("sae_c", 2, 128)
            assert [k.key for k in slave.dec_keys("sae_a", [k.key_id for k in keys])] == \
                   [k.key for k in keys]


async def test_serve_on_busy_port_raises_oserror(issued) -> None:  # type: ignore[no-untyped-def]
    import socket

    network = FakeKeyNetwork(line3(), seed=5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                               ca_file=issued.ca.cert, port=taken.getsockname()[1])
