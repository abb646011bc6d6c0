"""ETSI 015 SDN agent: cost of one write, one read and one telemetry sample against the number
of live VIRT links (one per relayed session through the node).

Run from a fresh clone: ``python bench/etsi015.py [--live 10,100,1000] [--repeat N]`` (adds
``src`` to the path itself). Prints figures, asserts nothing. In process (httpx
ASGITransport, no sockets), node km0 of examples/paper_poc.yaml, its 5 PHYS links carrying
telemetry; no randomness. For each count of live VIRT links (created in one bulk POST) it
times, ``--repeat`` times each:

* POST + DELETE of one more VIRT link through RESTCONF (two validated writes);
* GET of one VIRT link entry, and GET of the whole ``qkd_node``;
* one telemetry sample into the datastore (skr changing by 20 % each time, so every sample
  is a ``sdqkdn_link_perf_update``).

Wall-clock and process CPU time, and the YANG validation work of one write (data nodes handed
to yangson, the datastore's own count) where the datastore reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from keyplane.api.etsi015 import (  # noqa: E402
    DEFAULT_CONTROLLER_SUBJECT,
    PEER_SUBJECT_STATE_KEY,
    ROOT_MEMBER,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.bus import MemoryBus  # noqa: E402
from keyplane.clock import RealClock  # noqa: E402
from keyplane.config import load_topology  # noqa: E402
from keyplane.events import EventStream  # noqa: E402
from keyplane.messages import LinkState  # noqa: E402

TOPOLOGY = ROOT / "examples" / "paper_poc.yaml"
LINKS = f"/restconf/data/{ROOT_MEMBER}/qkd_links"


def _as_controller(app: Any) -> Any:
    """The app, with every request carrying the controller certificate's subject (as the
    mTLS server puts it in the connection's scope)."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "state": {PEER_SUBJECT_STATE_KEY: DEFAULT_CONTROLLER_SUBJECT}}
        await app(scope, receive, send)
    return wrapped


def _virt(uid: str) -> dict[str, Any]:
    return {"qkdl_id": uid, "qkdl_type": "etsi-qkd-node-types:VIRT",
            "qkdl_local": {"qkdn_id": qkdn_id("km0")}, "qkdl_remote": {"qkdn_id": qkdn_id("km3")},
            "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
            "virt_bandwidth": 100}


async def _timed(repeat: int, job: Callable[[int], Coroutine[Any, Any, None]]
                 ) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for i in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        await job(i)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def _fmt(xs: list[float]) -> str:
    ms = sorted(x * 1e3 for x in xs)
    return f"{statistics.median(ms):8.2f} {ms[int(0.95 * (len(ms) - 1))]:8.2f}"


async def measure(live: int, repeat: int) -> dict[str, Any]:
    """Figures for one count of live VIRT links."""
    topo = load_topology(TOPOLOGY)
    clock = RealClock()
    async with MemoryBus() as bus, SdnAgent("km0", topo, bus, clock, EventStream(clock)) as agent:
        store = agent.datastore
        for link in topo.links_of("km0"):
            store.apply_telemetry(link.link_id, state=LinkState.up, skr_bps=1e6, qber=0.02,
                                  wall_s=clock.wall())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_as_controller(
                create_agent_app(agent))), base_url="https://km0") as c:
            bulk = {"etsi-qkd-sdn-node:qkd_link": [_virt(qkdl_id(f"live-{i}"))
                                                   for i in range(live)]}
            assert (await c.post(LINKS, json=bulk)).status_code == 201
            meter = getattr(store, "validation", None)
            work: list[int] = []

            async def write(i: int) -> None:
                uid = qkdl_id(f"bench-{i}")
                before = meter.nodes if meter is not None else 0
                r1 = await c.post(LINKS, json={"etsi-qkd-sdn-node:qkd_link": [_virt(uid)]})
                r2 = await c.delete(f"{LINKS}/qkd_link={uid}")
                assert (r1.status_code, r2.status_code) == (201, 204), (r1.text, r2.text)
                if meter is not None:
                    work.append(meter.nodes - before)

            async def get_one(i: int) -> None:
                r = await c.get(f"{LINKS}/qkd_link={qkdl_id(f'live-{i % live}')}")
                assert r.status_code == 200

            async def get_all(_: int) -> None:
                assert (await c.get(f"/restconf/data/{ROOT_MEMBER}")).status_code == 200

            async def sample(i: int) -> None:
                store.apply_telemetry("km0-km1", state=LinkState.up,
                                      skr_bps=1e6 * (1.2 if i % 2 else 1.0), qber=0.02,
                                      wall_s=clock.wall())

            return {"write": await _timed(repeat, write),
                    "get_one": await _timed(repeat, get_one),
                    "get_all": await _timed(max(1, repeat // 4), get_all),
                    "sample": await _timed(repeat, sample),
                    "work": work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", default="10,100,1000",
                        help="comma-separated counts of live VIRT links")
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    counts = [int(x) for x in args.live.split(",")]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"parameters: node km0 of {TOPOLOGY.name} (5 PHYS links), live VIRT links {counts}, "
          f"repeat {args.repeat}, no randomness")
    print(f"machine: {platform.platform()}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}")
    print("times in ms: median p95 (wall) | median p95 (process CPU)")
    for live in counts:
        got = asyncio.run(measure(live, args.repeat))
        print(f"-- {live} live VIRT links")
        for key, name in (("write", "POST+DELETE one VIRT link"), ("get_one", "GET one VIRT link"),
                          ("get_all", "GET whole qkd_node"), ("sample", "telemetry sample")):
            wall, cpu = got[key]
            print(f"   {name:28s} {_fmt(wall)} | {_fmt(cpu)}")
        if got["work"]:
            print(f"   validation work per POST+DELETE: {statistics.median(got['work']):.0f} "
                  "data nodes handed to yangson")


if __name__ == "__main__":
    main()
