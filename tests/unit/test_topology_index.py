"""Topology.links_of is indexed (start-up at 1,000 nodes) and follows the links it was built from."""

from __future__ import annotations

from keyplane.config import QuantumLink, parse_topology

TOPO = """
version: 1
nodes: [{id: a}, {id: b}, {id: c}, {id: d}]
links:
  - {endpoints: [a, b], length_km: 10}
  - {endpoints: [b, c], length_km: 10}
  - {endpoints: [c, a], length_km: 10}
"""


def _scan(links: list[QuantumLink], node: str) -> list[str]:
    return [link.link_id for link in links if node in link.endpoints]


def test_links_of_matches_a_scan_in_order() -> None:
    t = parse_topology(TOPO)
    for node in ("a", "b", "c", "d"):
        assert [link.link_id for link in t.links_of(node)] == _scan(t.links, node)
    assert t.links_of("d") == []
    t.links_of("a").clear()  # callers get a copy, never the index itself
    assert len(t.links_of("a")) == 2


def test_links_of_follows_a_changed_links_list() -> None:
    t = parse_topology(TOPO)
    assert len(t.links_of("b")) == 2
    fewer = t.model_copy(update={"links": t.links[:1]})
    assert [link.link_id for link in fewer.links_of("b")] == ["a-b"]
    assert len(t.links_of("b")) == 2  # the original keeps its own index
    t.links.append(t.links[0].model_copy(update={"endpoints": ("b", "d")}))
    assert [link.link_id for link in t.links_of("d")] == ["b-d"]
