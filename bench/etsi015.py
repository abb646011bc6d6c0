"""ETSI 015 agent micro-benchmarks: GET of the whole tree, VIRT link create+delete, telemetry.

Run: ``PYTHONPATH=src /work/venv/bin/python bench/etsi015.py [--repeat N]``. Prints figures,
asserts nothing. In process (httpx ASGITransport, no sockets): measures the agent's own cost,
dominated by YANG validation of every write (yangson) and tree assembly.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    PEER_SUBJECT_STATE_KEY,
    ROOT_MEMBER,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.config import load_topology
from keyplane.events import EventStream
from keyplane.messages import LinkState


def _as_controller(app):  # type: ignore[no-untyped-def]
    async def wrapped(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            scope = {**scope, "state": {PEER_SUBJECT_STATE_KEY: DEFAULT_CONTROLLER_SUBJECT}}
        await app(scope, receive, send)
    return wrapped


TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "paper_poc.yaml"


async def main(repeat: int) -> None:
    topo = load_topology(TOPOLOGY)
    clock = RealClock()
    async with MemoryBus() as bus, SdnAgent("km0", topo, bus, clock, EventStream(clock)) as agent:
        app = _as_controller(create_agent_app(agent))
        for link in topo.links_of("km0"):
            agent.datastore.apply_telemetry(link.link_id, state=LinkState.up, skr_bps=1e4,
                                            qber=0.02, wall_s=clock.wall())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://km0") as c:
            get_s, write_s, tel_s = [], [], []
            for i in range(repeat):
                t = time.perf_counter()
                r = await c.get(f"/restconf/data/{ROOT_MEMBER}")
                get_s.append(time.perf_counter() - t)
                assert r.status_code == 200
                uid = qkdl_id(f"bench-{i}")
                body = {"etsi-qkd-sdn-node:qkd_link": [{
                    "qkdl_id": uid, "qkdl_type": "etsi-qkd-node-types:VIRT",
                    "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
                    "virt_bandwidth": 100}]}
                t = time.perf_counter()
                r1 = await c.post(f"/restconf/data/{ROOT_MEMBER}/qkd_links", json=body)
                r2 = await c.delete(f"/restconf/data/{ROOT_MEMBER}/qkd_links/qkd_link={uid}")
                write_s.append(time.perf_counter() - t)
                assert (r1.status_code, r2.status_code) == (201, 204)
                t = time.perf_counter()
                agent.datastore.apply_telemetry("km0-km1", state=LinkState.up,
                                                skr_bps=1e4 + i, qber=0.02, wall_s=clock.wall())
                tel_s.append(time.perf_counter() - t)
    print(f"command: {' '.join(sys.argv)}")
    print(f"parameters: node=km0 of paper_poc (5 PHYS links), repeat={repeat}, seed=n/a")
    print(f"machine: {platform.platform()}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}")
    for name, xs in (("GET whole qkd_node", get_s), ("POST+DELETE VIRT link", write_s),
                     ("telemetry sample (datastore)", tel_s)):
        xs_ms = sorted(x * 1e3 for x in xs)
        print(f"{name:30s} median {statistics.median(xs_ms):7.2f} ms   "
              f"p95 {xs_ms[int(0.95 * (len(xs_ms) - 1))]:7.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200)
    asyncio.run(main(parser.parse_args().repeat))
