"""What the demo asks of the entanglement service, and what it counts as a failure."""

from __future__ import annotations

from keyplane.config import load_topology
from keyplane.demo.entanglement import entanglement_asks, entanglement_problems


def test_one_demand_per_owner_with_apps_at_two_memory_nodes() -> None:
    asks = entanglement_asks(load_topology("quantum_network"))
    assert [(a.app, a.peer_app) for a in asks] == [("sae_a0", "sae_a3")]
    assert entanglement_asks(load_topology("paper_poc")) == []  # no entanglement section


def test_a_demand_not_served_in_full_is_a_problem() -> None:
    served = {"app": "a", "peer_app": "b", "packets": 2, "packet_size": 2, "state": "served",
              "pairs": 4, "same_eids_at_both_ends": True}
    assert entanglement_problems({"entanglement": [served]}) == []
    assert entanglement_problems({"entanglement": [{**served, "pairs": 3}]})
    assert entanglement_problems({"entanglement": [{**served, "same_eids_at_both_ends": False}]})
    refused = {**served, "state": "refused", "reason": "no path"}
    assert entanglement_problems({"entanglement": [refused]}) == [
        "entanglement a-b: refused no path"]
