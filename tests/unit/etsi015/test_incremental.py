"""Datastore writes validate what they change, not the whole tree (issue 15.1).

The work of a write is what the datastore hands to yangson (``NodeDatastore.validation``:
validator calls and data nodes), never wall-clock. The whole-tree datastore
(``incremental=False``) is the reference: the same writes must give the same answers and the
same trees, and its work grows with the live entries where the incremental one's does not.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from etsi015_support import assert_valid, with_subject
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from yangson import DataModel

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    NodeDatastore,
    RestconfError,
    SdnAgent,
    create_agent_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.api.etsi015.model import MODULE, ROOT_MEMBER, identity
from keyplane.api.etsi015.partition import entry_local_lists, model_entry_local_lists
from keyplane.config import Topology

WALL = 1_700_000_000.0
LINKS = f"{ROOT_MEMBER}/qkd_links"
APPS = f"{ROOT_MEMBER}/qkd_applications"


def virt(name: str, bandwidth: Any = 100, **extra: Any) -> dict[str, Any]:
    entry = {"qkdl_id": qkdl_id(name), "qkdl_type": identity("VIRT"),
             "qkdl_local": {"qkdn_id": qkdn_id("km0")}, "qkdl_remote": {"qkdn_id": qkdn_id("km3")},
             "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
             "virt_bandwidth": bandwidth}
    entry.update(extra)
    return entry


def app(name: str, **extra: Any) -> dict[str, Any]:
    entry = {"app_id": qkdl_id(f"app:{name}"), "app_type": identity("CLIENT"),
             "server_app_id": "urn:keyplane:sae:a", "app_qos": {"max_bandwidth": 300},
             "backing_qkdl_id": [qkdl_id("km0-km2")]}
    entry.update(extra)
    return entry


def populated(topology: Topology, live: int, *, incremental: bool = True) -> NodeDatastore:
    ds = NodeDatastore("km0", topology, incremental=incremental)
    if live:
        ds.create(LINKS, {f"{MODULE}:qkd_link": [virt(f"live-{i}") for i in range(live)]}, WALL)
    return ds


def write_work(ds: NodeDatastore) -> tuple[int, int]:
    """(validator calls, data nodes) of one VIRT link's POST and DELETE."""
    calls, nodes = ds.validation.calls, ds.validation.nodes
    ds.create(LINKS, {f"{MODULE}:qkd_link": [virt("probe")]}, WALL)
    ds.delete(f"{LINKS}/qkd_link={qkdl_id('probe')}", WALL)
    return ds.validation.calls - calls, ds.validation.nodes - nodes


# ---------------------------------------------------------------------------------- cost


def test_write_work_does_not_grow_with_live_virtual_links(topology: Topology) -> None:
    few, many = populated(topology, 10), populated(topology, 1000)
    assert len(many.document(WALL)[ROOT_MEMBER]["qkd_links"]["qkd_link"]) == 1005
    assert write_work(many) == write_work(few)
    calls, nodes = write_work(many)
    assert calls == 4  # config, then config + state, per write
    assert nodes < 400  # the node's top level and one entry, not 1,005 links


def test_whole_tree_validation_would_grow_and_the_meter_sees_it(topology: Topology) -> None:
    small = write_work(populated(topology, 10, incremental=False))[1]
    large = write_work(populated(topology, 200, incremental=False))[1]
    assert large > 5 * small


def test_reading_one_entry_and_telemetry_validate_nothing(topology: Topology) -> None:
    from keyplane.messages import LinkState

    ds = populated(topology, 1000)
    before = (ds.validation.calls, ds.validation.nodes)
    entry = ds.get(f"{LINKS}/qkd_link={qkdl_id('live-7')}", WALL)
    assert entry[f"{MODULE}:qkd_link"][0]["virt_bandwidth"] == 100
    for skr in (1e5, 2e5, 3e5):
        ds.apply_telemetry("km0-km2", state=LinkState.up, skr_bps=skr, qber=0.01, wall_s=WALL)
    assert (ds.validation.calls, ds.validation.nodes) == before
    # 1,000 VIRT links through km2 at 100 b/s each: the running sums are exact
    perf = ds.get(f"{LINKS}/qkd_link={qkdl_id('km0-km2')}/qkdl_performance", WALL)
    assert perf[f"{MODULE}:qkdl_performance"]["expected_consumption"] == 100_000
    assert perf[f"{MODULE}:qkdl_performance"]["eskr"] == 200_000


# ---------------------------------------------------------------------------------- refusals


@pytest.fixture
async def crowded_agent(topology: Topology, memory_bus: Any, clock: Any) -> Any:
    from keyplane.events import EventStream

    async with SdnAgent("km0", topology, memory_bus, clock, EventStream(clock)) as agent:
        agent.datastore.create(LINKS, {f"{MODULE}:qkd_link": [virt(f"live-{i}")
                                                              for i in range(1000)]}, WALL)
        yield agent


PHYS_NOT_IN_TOPOLOGY = {"qkdl_id": qkdl_id("made-up"), "qkdl_type": identity("PHYS"),
                        "qkdl_local": {"qkdn_id": qkdn_id("km0"), "qkdi_id": 1},
                        "qkdl_remote": {"qkdn_id": qkdn_id("km2"), "qkdi_id": 1}}


@pytest.mark.parametrize(("method", "path", "body", "status", "tag"), [
    ("POST", "qkd_links", {f"{MODULE}:qkd_link": [virt("bad", bandwidth="lots")]}, 400,
     "invalid-value"),
    ("POST", "qkd_links", {f"{MODULE}:qkd_link": [virt("bad", bogus=1)]}, 400,
     "unknown-element"),
    ("POST", "qkd_links", {f"{MODULE}:qkd_link": [virt("live-5")]}, 409, "data-exists"),
    ("PATCH", f"qkd_links/qkd_link={qkdl_id('live-5')}",
     {f"{MODULE}:qkd_link": [{"virt_bandwidth": -1}]}, 400, "invalid-value"),
    ("PUT", f"qkd_links/qkd_link={qkdl_id('live-5')}/qkdl_id",
     {f"{MODULE}:qkdl_id": qkdl_id("live-6")}, 400, "invalid-value"),
    ("POST", "qkd_links", {f"{MODULE}:qkd_link": [PHYS_NOT_IN_TOPOLOGY]}, 400, "invalid-value"),
    ("DELETE", f"qkd_links/qkd_link={qkdl_id('km0-km1')}", None, 405,
     "operation-not-supported"),
])
async def test_a_refused_write_with_1000_live_links_changes_nothing(
        crowded_agent: SdnAgent, method: str, path: str, body: Any, status: int,
        tag: str) -> None:
    app_ = with_subject(create_agent_app(crowded_agent), DEFAULT_CONTROLLER_SUBJECT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_),
                                 base_url="https://km0") as c:
        url = f"/restconf/data/{ROOT_MEMBER}/{path}"
        before = (await c.get(f"/restconf/data/{ROOT_MEMBER}")).json()
        r = await c.request(method, url, json=body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/yang-data+json")
        (error,) = r.json()["ietf-restconf:errors"]["error"]
        assert error["error-tag"] == tag
        after = (await c.get(f"/restconf/data/{ROOT_MEMBER}")).json()
    assert after == before
    assert_valid(after)


# ---------------------------------------------------------------------------------- reference

UUIDS = st.sampled_from([qkdn_id("km2"), qkdn_id("km3"), qkdl_id("v0"), qkdl_id("v1"),
                         qkdl_id("km0-km1"), "not-a-uuid"])
LINK_IDS = st.sampled_from([qkdl_id(n) for n in ("v0", "v1", "v2", "km0-km1")])
VALUES = st.one_of(st.integers(-1, 2**32), st.sampled_from(["x", identity("PHYS"),
                                                              identity("VIRT")]), UUIDS)
PATCHES = st.dictionaries(st.sampled_from(["virt_bandwidth", "qkdl_type", "qkdl_id",
                                           "virt_prev_hop", "qkdl_applications", "nope"]),
                          st.one_of(VALUES, st.lists(UUIDS, max_size=2)), max_size=2)


def _ops() -> st.SearchStrategy[tuple[str, str, Any]]:
    names = st.sampled_from(["v0", "v1", "v2"])
    return st.one_of(
        st.builds(lambda n, p: ("POST", LINKS, {f"{MODULE}:qkd_link": [virt(n, **p)]}),
                  names, PATCHES),
        st.builds(lambda n: ("POST", LINKS, {"qkd_links": {"qkd_link": [virt(n)]}}), names),
        st.builds(lambda u: ("DELETE", f"{LINKS}/qkd_link={u}", None), LINK_IDS),
        st.builds(lambda u, p: ("PATCH", f"{LINKS}/qkd_link={u}", {f"{MODULE}:qkd_link": [p]}),
                  LINK_IDS, PATCHES),
        st.builds(lambda n, p: ("PUT", f"{LINKS}/qkd_link={qkdl_id(n)}",
                                {f"{MODULE}:qkd_link": [virt(n, **p)]}), names, PATCHES),
        st.builds(lambda n, bw: ("POST", APPS, {f"{MODULE}:qkd_app": [
            app(n, app_qos={"max_bandwidth": bw},
                backing_qkdl_id=[qkdl_id("km0-km2"), qkdl_id("v0")])]}),
                  names, st.integers(0, 10_000)),
        st.builds(lambda n: ("DELETE", f"{APPS}/qkd_app={qkdl_id(f'app:{n}')}", None), names),
        st.builds(lambda n, p: ("PATCH", "", {f"{MODULE}:qkd_node": {"qkd_links": {"qkd_link": [
            virt(n, **p)]}}}), names, st.one_of(st.just({}), PATCHES)),
        st.builds(lambda n: ("PATCH", f"{LINKS}/qkd_link={qkdl_id(n)}", {
            f"{MODULE}:qkd_link": [{"qkdl_applications": [qkdl_id(f"app:{n}")]}]}), names),
    )


def _run(ds: NodeDatastore, op: tuple[str, str, Any]) -> tuple[Any, ...]:
    method, path, body = op
    try:
        if method == "POST":
            notes = ds.create(path, copy.deepcopy(body), WALL)[1]
        elif method == "PUT":
            notes = ds.replace(path, copy.deepcopy(body), WALL)[1]
        elif method == "PATCH":
            notes = ds.merge(path, copy.deepcopy(body), WALL)
        else:
            notes = ds.delete(path, WALL)
    except RestconfError as exc:
        return ("refused", exc.status, exc.error_tag)
    return ("done", sorted((n.name, json.dumps(n.content, sort_keys=True)) for n in notes))


@seed(1503)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_ops(), min_size=1, max_size=6))
def test_incremental_writes_answer_as_whole_tree_validation(topology: Topology,
                                                            ops: list[Any]) -> None:
    fast = NodeDatastore("km0", topology)
    reference = NodeDatastore("km0", topology, incremental=False)
    for op in ops:
        assert _run(fast, op) == _run(reference, op), op
        assert fast.document(WALL) == reference.document(WALL)
    assert_valid(fast.document(WALL))


# ---------------------------------------------------------------------------------- proof


def test_the_etsi_model_lists_are_entry_local() -> None:
    assert model_entry_local_lists() == {("qkd_links", "qkd_link"),
                                         ("qkd_applications", "qkd_app"),
                                         ("qkd_interfaces", "qkd_interface")}


BASE = """
  list a { key id; leaf id { type string; } leaf x { type string; } %(a)s
    container c { leaf y { type string; %(y)s } } }
  list b { key id; leaf id { type string; } }
  %(top)s
"""


def _model(tmp_path: Path, a: str = "", y: str = "", top: str = "") -> DataModel:
    body = BASE % {"a": a, "y": y, "top": top}
    (tmp_path / "t.yang").write_text(
        'module t { yang-version 1.1; namespace "urn:t"; prefix t;\n'
        f"container top {{ {body} }} }}\n", encoding="utf-8")
    library = {"ietf-yang-library:modules-state": {"module-set-id": "t", "module": [
        {"name": "t", "revision": "", "namespace": "urn:t", "conformance-type": "implement"}]}}
    return DataModel(json.dumps(library), [str(tmp_path)])


@pytest.mark.parametrize(("parts", "local"), [
    ({}, True),
    ({"y": 'must "../../x";'}, True),  # y is two levels below the entry: still inside
    ({"y": 'when "../../../b";'}, False),  # climbs out of the entry into the list b
    ({"y": 'must "/top/b";'}, False),  # absolute
    ({"a": 'leaf r { type leafref { path "../../b/id"; } }'}, False),
    ({"a": 'leaf r { type union { type string; type leafref { path "../x"; } } }'}, False),
    ({"a": 'unique "x";'}, False),
    ({"a": "min-elements 1;"}, False),
    ({"a": "leaf-list l { type string; max-elements 2; }"}, True),  # counts inside the entry
    ({"a": 'must "count(../a) < 3";'}, False),
    ({"y": 'must "ancestor::top";'}, False),
    ({"top": 'leaf n { type string; must "../a"; }'}, False),  # outside every list
])
def test_entry_locality_is_proved_from_the_schema(tmp_path: Path, parts: dict[str, str],
                                                  local: bool) -> None:
    expected = {("a",), ("b",)} if local else set()
    assert entry_local_lists(_model(tmp_path, **parts), "t:top") == expected
