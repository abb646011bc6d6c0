import asyncio
import ssl
from pathlib import Path

import pytest

from keyplane.certs import (
    client_ssl_context,
    ensure_network_certs,
    peer_subject,
    server_ssl_context,
)
from keyplane.config import load_topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    return topo, ensure_network_certs(topo, tmp_path_factory.mktemp("certs"))


def test_certs_are_idempotent_and_cover_every_km_and_sae(issued, tmp_path) -> None:  # type: ignore[no-untyped-def]
    topo, first = issued
    assert set(first.kms) == {n.id for n in topo.nodes}
    assert set(first.saes) == {a.sae_id for a in topo.applications}
    before = first.kms["km0"].cert.read_bytes()
    again = ensure_network_certs(topo, first.ca.cert.parent)
    assert again.kms["km0"].cert.read_bytes() == before
    assert oct(first.saes["sae0"].key.stat().st_mode & 0o777) == "0o600"


async def test_mutual_tls_handshake_reveals_sae_owner_subject(issued) -> None:  # type: ignore[no-untyped-def]
    topo, certs = issued
    server_ctx = server_ssl_context(certs.kms["km0"], certs.ca.cert)
    seen: list[str] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        seen.append(peer_subject(sslobj.getpeercert(binary_form=True)))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client_ctx = client_ssl_context(certs.saes["sae0"], certs.ca.cert)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        assert await reader.read(2) == b"ok"
        writer.close()
        assert seen == [topo.user("alice").certificate_subject]

        # a client without a certificate is refused by the server
        bare = ssl.create_default_context(cafile=str(certs.ca.cert))
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=bare,
                                                           server_hostname="localhost")
            await reader.readexactly(2)
