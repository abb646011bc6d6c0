"""Several nodes in one process (``keyplane node --id km1,km2``, issue 15.4) next to a node
in a process of its own, over a real secured nats-server and a real PostgreSQL: keys relayed
end to end across the process boundary and inside one process are identical at both ends;
the process of two nodes runs one link worker for its links; after a kill -9 of that
process its restart brings both nodes back and keys flow again. A bad ``--id`` list exits
with 2 and says what is wrong.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from keyplane.api.client import AsyncEtsi014Client, ServiceUnavailableError
from keyplane.cluster import ClusterSettings, LocalCluster
from keyplane.config import Topology
from keyplane.events import read_jsonl
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.postgres,
              pytest.mark.slow, pytest.mark.timeout(max(900, 4 * DEADLINE_S))]

GROUP = "km1,km2"
RETRY_S = 0.2
"""An application's pause after a 503 (no key yet: the links' first blocks, the session's
admission), as any ETSI 014 client; every wait is bounded by DEADLINE_S."""


def line_topology() -> Topology:
    """km0 - km1 - km2 (analytic links); sae0 at km0, sae1 at km1, sae2 at km2."""
    sla = {"max_sessions": 4, "max_bps": 200_000, "priority": 3, "idle_timeout_s": 600}
    return Topology.model_validate({
        "name": "node-group",
        "nodes": [{"id": "km0"}, {"id": "km1"}, {"id": "km2"}],
        "links": [{"endpoints": ["km0", "km1"], "length_km": 10, "protocol": "analytic"},
                  {"endpoints": ["km1", "km2"], "length_km": 10, "protocol": "analytic"}],
        "users": [{"id": "alice", "certificate_subject": "CN=alice,O=keyplane-group",
                   "sla": sla},
                  {"id": "bob", "certificate_subject": "CN=bob,O=keyplane-group", "sla": sla}],
        "applications": [{"sae_id": "sae0", "owner": "alice", "node": "km0"},
                         {"sae_id": "sae1", "owner": "alice", "node": "km1"},
                         {"sae_id": "sae2", "owner": "bob", "node": "km2"}]})


def _client(cluster: LocalCluster, sae: str) -> AsyncEtsi014Client:
    node = next(a.node for a in cluster.topology.applications if a.sae_id == sae)
    cert, key, ca = cluster.sae_files(sae)
    return AsyncEtsi014Client(cluster.etsi014_url(node), cert=cert, key=key, ca=ca,
                              sae_id=sae, timeout_s=DEADLINE_S)


async def _keys_at_both_ends(cluster: LocalCluster, master: str, slave: str, n: int
                             ) -> list[tuple[str, bytes, bytes]]:
    """``n`` keys: enc_keys by ``master``, dec_keys of the same key_IDs by ``slave``; each
    as (key_ID, master's bytes, slave's bytes)."""
    got: list[tuple[str, bytes, bytes]] = []
    async with _client(cluster, master) as m, _client(cluster, slave) as s, \
            asyncio.timeout(DEADLINE_S):
        while len(got) < n:
            try:
                keys = await m.enc_keys(slave, number=1)
                theirs = {k.key_id: k.key for k in await s.dec_keys(master,
                                                                    [keys[0].key_id])}
            except ServiceUnavailableError:
                await asyncio.sleep(RETRY_S)
                continue
            got += [(k.key_id, k.key, theirs[k.key_id]) for k in keys]
    return got


def _link_workers(pid: int) -> list[int]:
    """The link worker processes among ``pid``'s children."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids
            if b"keyplane.physical.worker" in Path(f"/proc/{k}/cmdline").read_bytes()]


async def test_two_nodes_in_one_process_relay_keys_with_a_node_in_another(
        tmp_path: Path) -> None:
    topo = line_topology()
    async with LocalCluster(topo, tmp_path, ClusterSettings(ready_timeout_s=DEADLINE_S),
                            groups=[["km1", "km2"]]) as cluster:
        assert cluster.elements == ["controller", GROUP, "km0"]
        kms = cluster.endpoints()["kms"]
        assert set(kms) == {"km0", "km1", "km2"}
        # each node of the group serves its own interfaces
        assert kms["km1"]["etsi014"] != kms["km2"]["etsi014"]
        assert kms["km1"]["etsi015"] != kms["km2"]["etsi015"]
        # one link worker runs both ends of km1-km2 and km1's end of km0-km1
        assert len(_link_workers(cluster.processes[GROUP].proc.pid)) == 1

        across = await _keys_at_both_ends(cluster, "sae0", "sae2", 3)  # km0 -> km1 -> km2
        inside = await _keys_at_both_ends(cluster, "sae1", "sae2", 3)  # km1 -> km2
        for key_id, mine, theirs in across + inside:
            assert mine == theirs and len(mine) == 32, key_id
        assert len({k for k, _, _ in across + inside}) == 6

        # the nodes share a fate: kill -9 of their process, then its restart brings both back
        await cluster.kill(GROUP)
        await cluster.start(GROUP)
        again = await _keys_at_both_ends(cluster, "sae0", "sae2", 2)
        again += await _keys_at_both_ends(cluster, "sae1", "sae2", 2)
        assert all(mine == theirs for _, mine, theirs in again)
        assert not {k for k, _, _ in again} & {k for k, _, _ in across + inside}
        assert cluster.exited() == {}
    # each node writes its own events, as it would in a process of its own
    km1 = read_jsonl(cluster.state / "events-km1.jsonl")
    km2 = read_jsonl(cluster.state / "events-km2.jsonl")
    assert km1 and km2 and {e.node for e in km2} == {"km2"}
    assert "km2" not in {e.node for e in km1}


@pytest.mark.parametrize(("ids", "says"), [
    ("km1,km9", "'km9' not in the topology"),
    ("km1,km2,km1", "'km1' given more than once"),
    ("km1,,km2", "none empty"),
])
def test_a_bad_node_id_list_exits_2_with_a_clear_error(tmp_path: Path, ids: str,
                                                       says: str) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(line_topology().model_dump_json())
    done = subprocess.run(
        [sys.executable, "-m", "keyplane", "node", "--id", ids, "-t", str(topo),
         "--bus", "nats://127.0.0.1:1", "-s", str(tmp_path / "state")],
        capture_output=True, text=True, env=keyplane_env({"COLUMNS": "200"}), cwd=ROOT,
        timeout=DEADLINE_S)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started
