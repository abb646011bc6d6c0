"""Small inline topologies for API tests (three nodes in a line, tokens and subjects)."""

from __future__ import annotations

from keyplane.config import Topology, parse_topology

__all__ = ["LINE3_YAML", "line3"]

LINE3_YAML = """
version: 1
name: line3
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 5}
  - {endpoints: [km1, km2], length_km: 5}
users:
  - {id: alice, certificate_subject: "CN=alice,O=test", token: alice-token,
     sla: {allowed_peers: [sae_b, sae_c], max_bps: 100000}}
  - {id: bob, certificate_subject: "CN=bob,O=test", token: bob-token,
     sla: {allowed_peers: [sae_a]}}
  - {id: carol, certificate_subject: "CN=carol,O=test", token: carol-token,
     sla: {allowed_peers: [sae_a]}}
  - {id: mallory, certificate_subject: "CN=mallory,O=test", token: mallory-token,
     sla: {allowed_peers: [sae_a]}}
applications:
  - {sae_id: sae_a, owner: alice, node: km0}
  - {sae_id: sae_b, owner: bob, node: km1}
  - {sae_id: sae_c, owner: carol, node: km2}
  - {sae_id: sae_m, owner: mallory, node: km1}
"""


def line3() -> Topology:
    """km0 - km1 - km2; sae_a (alice) at km0, sae_b (bob) and sae_m (mallory) at km1,
    sae_c (carol) at km2."""
    return parse_topology(LINE3_YAML)
