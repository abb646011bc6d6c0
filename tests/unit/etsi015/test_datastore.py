"""The pure datastore: any write either commits a model-valid tree or changes nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from keyplane.api.etsi015 import NodeDatastore, RestconfError, qkdl_id, qkdn_id, validate_node
from keyplane.api.etsi015.fields import parse_fields
from keyplane.api.etsi015.model import MODULE, ROOT_MEMBER, identity
from keyplane.config import Topology

WALL = 1_700_000_000.0
UUIDS = st.sampled_from([qkdn_id(n) for n in ("km0", "km1", "km2", "km3")]
                        + [qkdl_id("v1"), qkdl_id("km0-km1"), "not-a-uuid"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**33), st.text(max_size=8),
                    UUIDS, st.sampled_from(["3.000", "etsi-qkd-node-types:VIRT",
                                            "etsi-qkd-node-types:PHYS",
                                            "etsi-qkd-node-types:ACTIVE"]))
FIELDS = st.sampled_from(["qkdl_id", "qkdl_type", "qkdl_status", "qkdl_enable", "virt_prev_hop",
                          "virt_next_hop", "virt_bandwidth", "phys_channel_att",
                          "qkdl_applications", "qkdl_local", "bogus"])
ENTRIES = st.dictionaries(FIELDS, st.one_of(SCALARS, st.lists(UUIDS, max_size=2),
                                            st.fixed_dictionaries({"qkdn_id": UUIDS})),
                          max_size=7)


def good_entry() -> dict[str, Any]:
    return {"qkdl_id": qkdl_id("v1"), "qkdl_type": identity("VIRT"),
            "virt_prev_hop": qkdn_id("km1"), "virt_next_hop": [qkdn_id("km2")],
            "virt_bandwidth": 10}


@seed(1501)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(ENTRIES, min_size=1, max_size=2),
       tfs_form=st.booleans())
def test_post_commits_valid_tree_or_changes_nothing(topology: Topology, entries: list[dict[str, Any]],
                                                    tfs_form: bool) -> None:
    ds = NodeDatastore("km0", topology)
    before = ds.document(WALL)
    body = ({"qkd_links": {"qkd_link": entries}} if tfs_form
            else {f"{MODULE}:qkd_link": copy.deepcopy(entries)})
    try:
        ds.create(f"{ROOT_MEMBER}/qkd_links", body, WALL)
    except RestconfError as exc:
        assert 400 <= exc.status < 500
        assert ds.document(WALL) == before
    else:
        after = ds.document(WALL)
        validate_node(after)
        ids = {e["qkdl_id"] for e in after[ROOT_MEMBER]["qkd_links"]["qkd_link"]}
        assert {e["qkdl_id"] for e in entries} <= ids


def test_good_entry_is_accepted_and_shows_up(topology: Topology) -> None:
    ds = NodeDatastore("km0", topology)
    location, _ = ds.create(f"{ROOT_MEMBER}/qkd_links", {f"{MODULE}:qkd_link": [good_entry()]},
                            WALL)
    assert location.endswith(f"qkd_link={qkdl_id('v1')}")
    validate_node(ds.document(WALL))


@seed(1502)
@settings(max_examples=40, deadline=None)
@given(patch=st.dictionaries(st.sampled_from(["virt_bandwidth", "qkdl_status", "virt_next_hop",
                                              "qkdl_type", "qkdl_id", "nope"]),
                             st.one_of(SCALARS, st.lists(UUIDS, max_size=2)), max_size=3))
def test_patch_commits_valid_tree_or_changes_nothing(topology: Topology,
                                                     patch: dict[str, Any]) -> None:
    ds = NodeDatastore("km0", topology)
    ds.create(f"{ROOT_MEMBER}/qkd_links", {f"{MODULE}:qkd_link": [good_entry()]}, WALL)
    before = ds.document(WALL)
    path = f"{ROOT_MEMBER}/qkd_links/qkd_link={qkdl_id('v1')}"
    try:
        ds.merge(path, {f"{MODULE}:qkd_link": [patch]}, WALL)
    except RestconfError:
        assert ds.document(WALL) == before
    else:
        validate_node(ds.document(WALL))


@pytest.mark.parametrize(("expr", "tree"), [
    ("a", {"a": None}),
    ("a/b", {"a": {"b": None}}),
    ("a(b;c/d)", {"a": {"b": None, "c": {"d": None}}}),
    ("a/b;a/c", {"a": {"b": None, "c": None}}),
    ("a/b;a", {"a": None}),  # the whole node wins over a part of it
    ("m:a/b(c)", {"m:a": {"b": {"c": None}}}),
])
def test_parse_fields_follows_rfc8040_grammar(expr: str, tree: dict) -> None:
    assert parse_fields(expr) == tree


@pytest.mark.parametrize("expr", ["", ";", "a;", "a//b", "a(", "a()", "a)b", "(a)", "a b"])
def test_parse_fields_refuses_malformed_expressions(expr: str) -> None:
    with pytest.raises(RestconfError) as e:
        parse_fields(expr)
    assert e.value.status == 400


def test_copy_tree_is_a_deep_copy_of_json_data() -> None:
    from keyplane.api.etsi015.entries import copy_tree

    tree = {"a": [{"b": 1, "c": [True, None, 2.5, "x"]}], "d": {"e": ("t",)}}
    copied = copy_tree(tree)
    assert copied == tree
    copied["a"][0]["c"].append(3)
    copied["d"]["e"] += ("u",)
    assert tree == {"a": [{"b": 1, "c": [True, None, 2.5, "x"]}], "d": {"e": ("t",)}}
