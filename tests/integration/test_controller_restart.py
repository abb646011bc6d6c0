"""``keyplane controller`` killed with SIGKILL and started again, with node processes
running throughout, over a real nats-server and a real PostgreSQL (docs/control.md,
"Controller restart")."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from keyplane.certs import ensure_network_certs
from keyplane.config import load_topology
from keyplane.demo.distributed import SdkEndpoint
from keyplane.errors import InsufficientKeyMaterial
from keyplane.events import EventType, read_jsonl
from keyplane.messages import Qos
from keyplane.services import PostgresServer
from keyplane.store import Database
from keyplane.store.admitted import load_admitted_sessions
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import start_keyplane, stop

pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.postgres,
              pytest.mark.slow]

# sae2 (km2) ↔ sae3 (km3), relayed through km0: a VIRT link on three nodes
TOPOLOGY = """
version: 1
name: restart
nodes: [{id: km0}, {id: km2}, {id: km3}]
links:
  - {endpoints: [km0, km2], length_km: 10}
  - {endpoints: [km0, km3], length_km: 10}
users:
  - id: carol
    certificate_subject: "CN=carol,O=keyplane-demo"
    sla: {max_sessions: 2, max_bps: 100000, min_bps: 0, priority: 3, idle_timeout_s: 60,
          allowed_peers: [sae3]}
  - id: dave
    certificate_subject: "CN=dave,O=keyplane-demo"
    sla: {max_sessions: 2, max_bps: 100000, min_bps: 0, priority: 3, idle_timeout_s: 60,
          allowed_peers: [sae2]}
applications:
  - {sae_id: sae2, owner: carol, node: km2}
  - {sae_id: sae3, owner: dave, node: km3}
"""
NODES = ("km0", "km2", "km3")


async def _same_key(a: SdkEndpoint, b: SdkEndpoint, stream: str, index: int,
                    timeout_s: float = DEADLINE_S) -> bytes:
    """GET_KEY ``index`` at both ends (retrying 'insufficient key' as an application would);
    both must get the same key."""
    keys: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        for end in (a, b):
            while True:
                try:
                    key, _ = await end.get_key(stream, index)
                except InsufficientKeyMaterial:
                    await asyncio.sleep(0.2)  # an application's retry pace; the timeout above bounds it
                    continue
                keys.append(key)
                break
    assert keys[0] == keys[1] and len(keys[0]) == 32
    return keys[0]


def _events(state: Path, kind: EventType, since_wall: float = 0.0) -> list:  # type: ignore[type-arg]
    return [e for e in read_jsonl(state / "events-controller.jsonl")
            if e.type is kind and e.wall >= since_wall]


async def _until(pred, what: str,  # type: ignore[no-untyped-def]
                 timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)  # poll interval of a deadline-bounded wait


async def test_killed_controller_restarts_and_takes_back_the_live_session(
        topology_nats, postgres_server: PostgresServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(TOPOLOGY)
    state = tmp_path / "state"
    ensure_network_certs(load_topology(topo_file), state / "certs")
    nats_server = topology_nats(topo_file, state / "certs")
    db_url = postgres_server.create_database("t_" + uuid.uuid4().hex[:12])
    common = ("-t", str(topo_file), "--bus", nats_server.url, "--db", db_url, "-s", str(state))

    def controller(log: str):  # type: ignore[no-untyped-def]
        return start_keyplane("controller", *common, ready="controller ready",
                              log=tmp_path / log)

    ctl = await asyncio.to_thread(controller, "ctl.log")
    procs = []
    db = await Database.open(db_url)
    a = b = None
    try:
        for node in NODES:
            procs.append(await asyncio.to_thread(
                start_keyplane, "node", "--id", node, *common, ready=f"node {node} ready",
                log=tmp_path / f"{node}.log"))
        kms = json.loads((state / "endpoints.json").read_text())["kms"]
        assert set(kms) == set(NODES)

        a, b = SdkEndpoint(state, "sae2"), SdkEndpoint(state, "sae3")
        qos = Qos(key_chunk_size=32, max_bps=20_000)
        stream = ""

        async def opened() -> bool:
            """OPEN_CONNECT at both ends; until both links make key (the Routing Element
            sees that within its metrics refresh) the session is refused: open again."""
            nonlocal stream
            stream = str(uuid.uuid4())
            results = await asyncio.gather(a.open("sae3", qos, stream),
                                           b.open("sae2", qos, stream), return_exceptions=True)
            if all(isinstance(r, str) for r in results):
                return True
            await asyncio.sleep(1.0)  # an application's pause before it opens again; bounded by _until
            return False

        await _until(opened, "a session admitted", DEADLINE_S)
        first = await _same_key(a, b, stream, 0)

        async def stored() -> bool:  # Admission Control writes its store behind the session
            return len(await load_admitted_sessions(db)) == 1

        await _until(stored, "the admitted session stored")
        (row,) = await load_admitted_sessions(db)
        assert row.session_id == stream and row.path[1] == "km0"  # the first opener is
        assert {row.path[0], row.path[2]} == {"km2", "km3"}     # the source

        ctl.kill()  # SIGKILL: nothing is flushed, nothing is said to anyone
        ctl.wait(DEADLINE_S)
        restarted = time.time()
        ctl = await asyncio.to_thread(controller, "ctl-restarted.log")

        # it took the session back: Admission, the Routing Element's reservation, the VIRT
        # link on the three nodes (whose agents it found in the store, not announced again)
        restored = _events(state, EventType.session_restored, restarted)
        assert {(e.element, e.session) for e in restored} == {("admission", stream),
                                                              ("routing", stream)}
        assert json.loads((state / "endpoints.json").read_text())["kms"] == kms

        async def provisioned() -> bool:
            return any(e.session == stream for e in
                       _events(state, EventType.virtual_link_provisioned, restarted))

        await _until(provisioned, "the VIRT link provisioned again")

        # keys keep flowing, and the keep-alives reach the new controller
        for index in range(1, 4):
            assert await _same_key(a, b, stream, index) != first

        async def kept_alive() -> bool:
            rows = await load_admitted_sessions(db)
            return len(rows) == 1 and rows[0].last_keepalive_wall >= restarted

        await _until(kept_alive, "a keep-alive stamped after the restart")

        # CLOSE at both ends: the new controller deletes the path and forgets the session
        await asyncio.gather(a.close(stream), b.close(stream))
        a = b = None

        async def forgotten() -> bool:
            return (await load_admitted_sessions(db)) == []

        await _until(forgotten, "the stored session deleted")
        deleted = _events(state, EventType.session_deleted, restarted)
        assert [e.session for e in deleted] == [stream]
        assert sorted(deleted[0].data["confirmed"]) == sorted(NODES)
        assert not [e for e in _events(state, EventType.sdn_agent_failed, restarted)
                    if e.data["operation"] == "provision_path"]
    finally:
        for end in (a, b):
            if end is not None:
                await end.client.aclose()
        await db.close()
        for proc in procs:
            await asyncio.to_thread(stop, proc)
        await asyncio.to_thread(stop, ctl)
