"""Shared set-up for the benchmarks: real key managers under the real control plane.

Every bench that needs a network builds it here, from product code only (never from
tests/): one :class:`~keyplane.keymanager.KeyManager` per node and the real
:class:`~keyplane.control.ControlPlane` (Access Control, Admission Control with the users' SLA
profiles, the Routing Element, the Monitoring Element and the SDN Controller without an
ETSI 015 driver) on one bus and one store. The link key stores are fed up front with the same
random blocks at both ends of each link, standing in for the physical layer, so what a bench
measures is the key management and control planes, not the emulated QKD links.

Run a bench as ``python bench/<name>.py`` from the repository root (a fresh clone with
``pip install -e .``): this module puts ``src/`` on the path so it also runs uninstalled.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from keyplane.bus import Bus  # noqa: E402
from keyplane.clock import Clock  # noqa: E402
from keyplane.config import Topology, parse_topology  # noqa: E402
from keyplane.control import ControlPlane, ControlSettings  # noqa: E402
from keyplane.events import EventStream  # noqa: E402
from keyplane.keymanager import KeyManager, KmSettings  # noqa: E402
from keyplane.keymanager.interface import Caller  # noqa: E402
from keyplane.keymanager.pqc import KmIdentity  # noqa: E402
from keyplane.store import Database  # noqa: E402

__all__ = ["CALLER_A", "CALLER_B", "BenchNet", "line_topology", "machine_line", "start_net"]

CALLER_A = Caller("CN=a")
"""The owner of the SAEs at the first node (sa, sc)."""
CALLER_B = Caller("CN=b")
"""The owner of the SAEs at the last node (sb, sd)."""

# SLA generous enough that the bench measures the planes, not a policy limit: the token
# bucket admits any request rate a bench can produce, sessions never idle out.
_SLA = ("{max_sessions: 100000, max_bps: 1000000000000, priority: 3, "
        "idle_timeout_s: 3600, hybrid_policy: HYBRID}")


def line_topology(n_nodes: int, *, hybrid_policy: str = "qkd-only") -> Topology:
    """km0 - km1 - ... - km{n-1}; users a (SAEs sa, sc at km0) and b (sb, sd at the last).

    Args:
        n_nodes: nodes on the line (>= 2).
        hybrid_policy: both users' SLA hybrid policy (keyplane.config.HybridPolicy value).
    """
    nodes = "\n".join(f"  - {{id: km{i}}}" for i in range(n_nodes))
    links = "\n".join(f"  - {{endpoints: [km{i}, km{i + 1}], length_km: 10}}"
                      for i in range(n_nodes - 1))
    sla = _SLA.replace("HYBRID", hybrid_policy)
    last = n_nodes - 1
    return parse_topology(f"""
version: 1
name: bench-line-{n_nodes}
nodes:
{nodes}
links:
{links}
users:
  - {{id: a, certificate_subject: "CN=a", sla: {sla}}}
  - {{id: b, certificate_subject: "CN=b", sla: {sla}}}
applications:
  - {{sae_id: sa, owner: a, node: km0}}
  - {{sae_id: sc, owner: a, node: km0}}
  - {{sae_id: sb, owner: b, node: km{last}}}
  - {{sae_id: sd, owner: b, node: km{last}}}
""")


@dataclass
class BenchNet:
    """Running KMs and the control plane of one bench network."""

    topology: Topology
    plane: ControlPlane
    kms: dict[str, KeyManager] = field(default_factory=dict)
    next_block: dict[str, int] = field(default_factory=dict)  # the next block id, by link
    rng: random.Random = field(default_factory=random.Random)  # the link key's bytes

    async def feed(self, blocks: dict[str, int], block_bytes: int = 1 << 14) -> None:
        """Put ``blocks[link]`` more blocks of random link key at both ends of each link,
        then wait until each peer acknowledged every block (sendable at both ends)."""
        for link in self.topology.links:
            first = self.next_block.get(link.link_id, 0)
            for b in range(first, first + blocks.get(link.link_id, 0)):
                material = self.rng.randbytes(block_bytes)
                for end in link.endpoints:
                    await self.kms[end].put_block(link.link_id, b, material)
            self.next_block[link.link_id] = first + blocks.get(link.link_id, 0)
        for km in self.kms.values():  # each peer acknowledged every block
            if not await km.links_acknowledged():
                raise RuntimeError(f"{km.node_id}: link blocks not acknowledged")

    async def top_up(self, min_bytes: int, block_bytes: int = 1 << 14) -> int:
        """Feed each link until both its ends can send at least ``min_bytes`` (a long
        bench spends more link key than a start-up feed holds); the blocks fed in all.

        A block gives each direction about half its bytes (``keystore.send_half``)."""
        need: dict[str, int] = {}
        for link in self.topology.links:
            a, b = link.endpoints
            low = min(self.kms[a].link_store(b).sendable_bytes,
                      self.kms[b].link_store(a).sendable_bytes)
            if low < min_bytes:
                need[link.link_id] = -(-(min_bytes - low) // (block_bytes // 2)) + 1
        if need:
            await self.feed(need, block_bytes)
        return sum(need.values())

    def km(self, i: int) -> KeyManager:
        """The KM of node ``km{i}``."""
        return self.kms[f"km{i}"]

    async def close(self) -> None:
        """Close the KMs, then the control plane."""
        for km in self.kms.values():
            await km.close()
        await self.plane.close()


async def start_net(topology: Topology, bus: Bus, db: Database, clock: Clock,
                    events: EventStream, *, km_settings: KmSettings | None = None,
                    control_settings: ControlSettings | None = None, seed: int = 1,
                    blocks: int = 16, block_bytes: int = 1 << 14,
                    identities: dict[str, KmIdentity] | None = None,
                    km_buses: dict[str, Bus] | None = None) -> BenchNet:
    """Start the control plane and one KM per node, and feed every link's key stores.

    Args:
        blocks, block_bytes: link key fed to each link up front (16 KiB is about what one
            privacy-amplified QKD block yields).
        identities: KM certificates (for ML-KEM hop keys), by node.
        km_buses: a bus per node (each KM with its own credentials on a secured bus);
            default: every KM on ``bus``, with the control plane.
    """
    plane = ControlPlane(topology, bus, db, clock, events, control_settings)
    await plane.start()
    net = BenchNet(topology, plane, rng=random.Random(seed))
    try:
        for node in topology.nodes:
            km = KeyManager(node.id, topology, (km_buses or {}).get(node.id, bus), db, clock,
                            events, km_settings, (identities or {}).get(node.id))
            await km.start()
            net.kms[node.id] = km
        await net.feed({link.link_id: blocks for link in topology.links}, block_bytes)
    except BaseException:
        await net.close()
        raise
    return net


def machine_line(argv: Sequence[str] | None = None) -> str:
    """The command and machine lines every bench prints first."""
    cmd = " ".join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])
    return (f"command: {cmd}\n"
            f"machine: {platform.machine()} {platform.processor() or ''} "
            f"cpus={os.cpu_count()} python={platform.python_version()} {platform.system()}")
