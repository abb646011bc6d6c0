"""The paper's proof of concept, embedded, as `keyplane demo` runs it (bb84-decoy links)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyplane.config import load_topology
from keyplane.demo.run import DemoOptions, run_embedded_demo
from keyplane.events import EventType, read_jsonl

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


async def test_demo_three_pairs_get_identical_keys_and_relay_crosses_km0_padded(
        tmp_path: Path) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    summary = await run_embedded_demo(DemoOptions(topology=topo, out=tmp_path, keys=4,
                                                  live=False))
    sessions = {s["pair"]: s for s in summary["sessions"]}
    assert set(sessions) == {"sae0-sae1", "sae2-sae3", "sae4-sae5"}
    for s in sessions.values():
        assert s["status"] == "closed", s
        assert s["keys_delivered"] == 4 and s["all_keys_matched"], s
        assert s["key_rate"]["keys_per_s"] > 0 and s["key_rate"]["bits_per_s"] > 0, s
    run = summary["run"]
    assert run["mode"] == "embedded" and run["seed"] == 1 and run["keyplane_version"]
    assert len(run["topology_sha256"]) == 64
    relayed = sessions["sae2-sae3"]
    assert relayed["path"][1] == "km0" and len(relayed["path"]) == 3
    assert "km0" in relayed["relayed_at"] and "km0" not in relayed["delivered_at"]
    assert relayed["intermediates_never_delivered"]
    assert sorted(sessions["sae0-sae1"]["path"]) == ["km0", "km1"]
    assert sorted(sessions["sae4-sae5"]["path"]) == ["km4", "km5"]
    # outputs
    events = read_jsonl(tmp_path / "events.jsonl")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert "<svg" in (tmp_path / "timeline.html").read_text()
    # every session closed at Admission Control, and every KM on each path freed it
    sid = relayed["key_stream_id"]
    closed = [e for e in events if e.session == sid and e.type in (
        EventType.session_closed, EventType.session_deleted)]
    assert {e.node for e in closed if e.element == "km"} >= {"km2", "km0", "km3"}
    # no event carries key material
    from keyplane.events import FORBIDDEN_DATA_FIELDS

    assert not any(FORBIDDEN_DATA_FIELDS & e.data.keys() for e in events)
    fingerprints = {f for s in sessions.values() for f in s["key_fingerprints"]}
    assert len(fingerprints) == 12  # 3 pairs x 4 keys, all distinct


async def test_demo_eavesdropper_on_used_link_reroutes_the_session(tmp_path: Path) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    summary = await run_embedded_demo(DemoOptions(
        topology=topo, out=tmp_path, keys=150, interval_s=0.05, eve_link="km4-km5",
        eve_after_s=1.0, live=False))
    s45 = next(s for s in summary["sessions"] if s["pair"] == "sae4-sae5")
    kinds = {a["kind"] for a in summary["alarms"]}
    assert "qber_high" in kinds
    assert s45["rerouted"] and s45["path"] in (["km4", "km0", "km5"], ["km5", "km0", "km4"])
    assert s45["all_keys_matched"] and s45["keys_delivered"] == 150, s45
    assert summary["links"]["km4-km5"]["aborted"] > 0


async def test_demo_quantum_network_serves_entanglement_beside_key_streams(
        tmp_path: Path) -> None:
    """examples/quantum_network.yaml: key streams over MDI/TF/BBM92/BB84 links and, at the
    same time, alice's entanglement demand through the nodes' entanglement API (#19)."""
    from keyplane.demo.entanglement import entanglement_problems

    topo = load_topology(ROOT / "examples" / "quantum_network.yaml")
    summary = await run_embedded_demo(DemoOptions(topology=topo, out=tmp_path, keys=4,
                                                  live=False))
    assert entanglement_problems(summary) == []
    # the key streams ran beside it (whether the relayed one gets all its keys within the
    # request timeout on a loaded machine is the demo's key-stream business, not tested here)
    sessions = summary["sessions"]
    assert len(sessions) == 3 and sum(s["keys_delivered"] for s in sessions) > 0
    assert all(s["keys_matched"] == s["keys_delivered"] for s in sessions)
    [ent] = summary["entanglement"]
    assert (ent["app"], ent["peer_app"], ent["state"]) == ("sae_a0", "sae_a3", "served")
    assert ent["pairs"] == ent["packets"] * ent["packet_size"] == 40
    assert ent["same_eids_at_both_ends"] and ent["min_pair_fidelity"] >= ent["min_fidelity"]
    assert ent["path"][0] == "km0" and ent["path"][-1] == "km3"
    assert all(e.startswith("eid-") for e in ent["first_eids"])
