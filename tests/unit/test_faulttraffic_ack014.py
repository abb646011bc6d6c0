"""The fault traffic's ETSI 014 fetch closes issue #14's dec_keys window: an attempt whose
answer is lost (after the slave's KM served it) is retried with the same key_IDs and gets
the same keys (``keyplane_ack``), which a later fetch confirms (``keyplane_confirm``).

The real KMs and control plane (tests/support/real_net.py) and the SDK client; only the
network drops the first answer. ``Traffic._fetch_014`` is exercised alone: it uses no part
of the cluster (which would start KM processes)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from keyplane.api.client import AsyncEtsi014Client
from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.config import parse_topology
from keyplane.faulttraffic import Ledger, MatrixSettings, Traffic
from keyplane.store import Database, sqlite_url
from tests.support.real_net import RealNet, real_net
from tests.support.tls_scope import with_client_certificate

TOPOLOGY = """
version: 1
name: faulttraffic-ack014
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km2], length_km: 10}
users:
  - {id: alice, certificate_subject: "CN=alice,O=c014", sla: {max_sessions: 8}}
  - {id: bob, certificate_subject: "CN=bob,O=c014", sla: {max_sessions: 8}}
applications:
  - {sae_id: sa, owner: alice, node: km0}
  - {sae_id: sb, owner: bob, node: km2}
"""


class _LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Serves every request; the first answer is lost on its way back."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("the answer was lost", request=request)
        return response


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[RealNet]:
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        async with real_net(parse_topology(TOPOLOGY), db, seed=14015) as n:
            yield n
    finally:
        await db.close()


async def test_a_lost_dec_keys_answer_is_retried_and_confirmed(net: RealNet) -> None:
    topo = net.topology
    app = create_km_app(net.kms["km2"], kme_id="km2", settings=ApiSettings.from_topology(
        topo, "km2", limits=Etsi014Limits.from_km_settings(net.settings)))
    lossy = _LoseFirstAnswer(httpx.ASGITransport(
        app=with_client_certificate(app, "CN=bob,O=c014")))
    slave = AsyncEtsi014Client("https://km2", transport=lossy)
    ledger = Ledger()
    traffic = Traffic(cast(Any, None), ledger, MatrixSettings(), pair_014=("sa", "sb"),
                      pair_004=("sa", "sb"))
    try:
        batches = []
        for _ in range(2):
            r = await net.client("alice").get("/api/v1/keys/sb/enc_keys",
                                              params={"number": 2})
            assert r.status_code == 200
            keys = r.json()["keys"]
            for k in keys:
                ledger.got_master(k["key_ID"], base64.b64decode(k["key"]))
            batches.append([k["key_ID"] for k in keys])
            await traffic._fetch_limit.acquire()  # _fetch_014 releases it
            await traffic._fetch_014(slave, batches[-1])
        assert lossy.lost == 1 and ledger.errors.get("dec_keys: TransportError") == 1
        assert not ledger.refused and not ledger.repeats
        for ids in batches:
            for i in ids:
                assert ledger.slave[i][0] == ledger.master[i][0]
        # the first batch was confirmed by the second fetch; the second is still held
        assert net.kms["km2"].held_for("sb", "sa") == 2
    finally:
        await slave.aclose()
