"""Interop: the PyPI ``etsi-qkd-014-client`` (LIP6) against our KMEs over mutual TLS.

Before the real key manager lands this runs over the FakeKeyManager double; the
end-to-end version against keyplane.keymanager is in tests/integration/.
"""

from __future__ import annotations

import pytest
from etsi_qkd_014_client import QKD014Client
from tests.support.api_server import serve_network_in_thread
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import line3

from keyplane.certs import ensure_network_certs


@pytest.fixture(scope="module")
def kmes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    topo = line3()
    issued = ensure_network_certs(topo, tmp_path_factory.mktemp("pki"))
    network = FakeKeyNetwork(topo, seed=1401)
    with serve_network_in_thread(topo, issued, network.km) as servers:
        def client(sae: str) -> QKD014Client:
            node = next(a.node for a in topo.applications if a.sae_id == sae)
            c = issued.saes[sae]
            return QKD014Client(f"127.0.0.1:{servers[node].port}", str(c.cert), str(c.key),
                                str(issued.ca.cert))

        yield client


@pytest.mark.parametrize(("master", "slave"), [("sae_a", "sae_b"), ("sae_a", "sae_c")],
                         ids=["adjacent", "two-hop"])
def test_lip6_client_master_and_slave_get_same_bytes(kmes, master: str, slave: str) -> None:  # type: ignore[no-untyped-def]
    m, s = kmes(master), kmes(slave)
    code, status = m.get_status(slave)
    assert code == 200 and status.master_sae_id == master and status.slave_sae_id == slave
    code, container = m.get_key(slave, number=3, size=256)
    assert code == 200 and len(container.keys) == 3
    sent = {k.key_id: k.key for k in container.keys}
    code, got = s.get_key_with_key_IDs(master, list(sent))
    assert code == 200
    assert {k.key_id: k.key for k in got.keys} == sent


def test_lip6_client_simple_get_and_errors(kmes) -> None:  # type: ignore[no-untyped-def]
    m = kmes("sae_a")
    code, container = m.get_key("sae_b")  # all defaults: a plain GET
    assert code == 200 and len(container.keys) == 1
    code, err = m.get_key("sae_b", size=12)
    assert code == 400 and err.message == "size shall be a multiple of 8"
    code, err = m.get_key("sae_b", extension_mandatory=[{"vendor_x": 1}])
    assert code == 400 and err.details == [{"extension_mandatory_unsupported": "vendor_x"}]
    code, err = kmes("sae_b").get_key_with_key_IDs("sae_a", ["00000000-0000-4000-8000-000000000000"])
    assert code == 400
