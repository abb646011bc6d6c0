"""Test support for control-plane tests: an inline topology and request builders.

Topology (every link 10 km)::

        b ─── c
       /       \\
      a         d        a→d: a-e-d (2 hops) is the shortest; a-b-c-d (3 hops) the detour
       \\       /
        ─  e  ─
"""

from __future__ import annotations

from keyplane.messages import Qos, SessionOpenRequest

__all__ = ["NODES", "TOPOLOGY", "open_request"]

TOPOLOGY = """
version: 1
name: control-test
nodes: [{id: a}, {id: b}, {id: c}, {id: d}, {id: e}]
links:
  - {endpoints: [a, b], length_km: 10}
  - {endpoints: [b, c], length_km: 10}
  - {endpoints: [c, d], length_km: 10}
  - {endpoints: [a, e], length_km: 10}
  - {endpoints: [e, d], length_km: 10}
users:
  - id: alice
    certificate_subject: "CN=alice,O=test"
    token: alice-secret-token
    sla: {max_sessions: 3, max_bps: 10000, min_bps: 0, priority: 5, idle_timeout_s: 30,
          allowed_peers: [sae_d, sae_c]}
  - id: dave
    certificate_subject: "CN=dave,O=test"
    sla: {max_sessions: 3, max_bps: 8000, min_bps: 0, priority: 3, idle_timeout_s: 20,
          allowed_peers: [sae_a]}
  - id: carol
    certificate_subject: "CN=carol,O=test"
    sla: {max_sessions: 1, max_bps: 10000, priority: 2, allowed_peers: ["*"]}
applications:
  - {sae_id: sae_a, owner: alice, node: a}
  - {sae_id: sae_d, owner: dave, node: d}
  - {sae_id: sae_c, owner: carol, node: c}
"""

NODES = ["a", "b", "c", "d", "e"]


def open_request(session_id: str, node: str, user: str, src: str, dst: str, *,
                 interface: str = "etsi004", **qos: int) -> SessionOpenRequest:
    """An endpoint KM's open request."""
    return SessionOpenRequest(session_id=session_id, node=node, user_id=user, source_sae=src,
                              destination_sae=dst, qos=Qos(**qos),
                              interface=interface)  # type: ignore[arg-type]
