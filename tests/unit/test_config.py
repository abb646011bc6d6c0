from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.config import load_topology, parse_topology
from keyplane.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_paper_poc_topology_is_a_star_around_km0_plus_one_leaf_edge() -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    assert [n.id for n in topo.nodes] == [f"km{i}" for i in range(6)]
    star = {frozenset(("km0", f"km{i}")) for i in range(1, 6)}
    edges = {frozenset(link.endpoints) for link in topo.links}
    assert star <= edges and len(edges - star) == 1
    (extra,) = edges - star
    assert "km0" not in extra
    pairs = {(topo.application(a).node, topo.application(b).node)
             for a, b in [("sae0", "sae1"), ("sae2", "sae3"), ("sae4", "sae5")]}
    assert pairs == {("km0", "km1"), ("km2", "km3"), ("km4", "km5")}


def test_topology_bad_field_error_names_field_and_line() -> None:
    text = "nodes:\n  - id: a\n  - id: b\nlinks:\n  - endpoints: [a, b]\n    length_km: -3\n"
    with pytest.raises(ConfigError) as exc:
        parse_topology(text, "net.yaml")
    assert "net.yaml:6" in str(exc.value)
    assert "links[0].length_km" in str(exc.value)


def test_topology_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.colour"):
        parse_topology("nodes:\n  - id: a\n    colour: red\n")


@pytest.mark.parametrize(("text", "needle"), [
    ("nodes: [{id: a}]\nlinks: [{endpoints: [a, z], length_km: 1}]", "unknown node 'z'"),
    ("nodes: [{id: a}, {id: a}]", "duplicate id 'a'"),
    ("nodes: [{id: a}, {id: b}]\nlinks: [{endpoints: [a, a], length_km: 1}]", "two different"),
    ("nodes: [{id: a}]\napplications: [{sae_id: s, owner: nobody, node: a}]", "unknown user"),
    ("nodes: [{id: 'a.b'}]", "nodes[0].id"),
    ("nodes: [{id: a}]\nusers: [{id: u, sla: {min_bps: 5, max_bps: 1}}]", "min_bps"),
    ("- just\n- a list", "mapping"),
    ("nodes: [", "not valid YAML"),
])
def test_topology_invalid_documents_raise_config_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_topology(text)
    assert needle in str(exc.value)


def test_topology_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "absent.yaml")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["nodes", "links", "users", "applications", "id",
                                         "endpoints", "length_km", "sla", "x"]), c, max_size=4),
                    max_leaves=20))
def test_topology_loader_either_loads_or_raises_config_error(doc: object) -> None:
    import yaml

    try:
        parse_topology(yaml.safe_dump(doc))
    except ConfigError:
        pass


def test_topology_cross_reference_error_names_line_of_the_field() -> None:
    text = "nodes:\n  - id: a\nlinks:\n  - endpoints: [a, b]\n    length_km: 3\n"
    with pytest.raises(ConfigError) as exc:
        parse_topology(text, "net.yaml")
    assert "net.yaml:4: links[0].endpoints: unknown node 'b'" in str(exc.value)


def test_every_problem_is_reported_at_once_with_its_line() -> None:
    text = """nodes: [{id: a}, {id: b}]
links:
  - {endpoints: [a, zz], length_km: 10}
users:
  - {id: u, token: t}
applications:
  - {sae_id: s1, owner: u, node: a}
  - {sae_id: s2, owner: nobody, node: b}
"""
    with pytest.raises(ConfigError) as info:
        parse_topology(text, "t.yaml")
    msg = str(info.value)
    assert "t.yaml:3: links[0].endpoints: unknown node 'zz'" in msg
    assert "t.yaml:8: applications[1].owner: unknown user 'nobody'" in msg
    assert "t.yaml:5: users[0].certificate_subject: user 'u' owns applications" in msg


def test_field_descriptions_carry_units_for_the_reference() -> None:
    from keyplane.config import QuantumLink, Topology

    assert "km" in (QuantumLink.model_fields["length_km"].description or "")
    schema = Topology.model_json_schema()
    assert schema["$defs"]["QuantumLink"]["properties"]["length_km"]["description"]
